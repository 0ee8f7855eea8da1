//! The key-auth filter and LLM routing through the real binary on its
//! embedded default (SQLite, in-process caches): every gate answers with its
//! documented status and an OpenAI-shaped error, the model and credential
//! are rewritten on the way upstream, and admin changes apply at once.

mod common;

use common::*;
use serde_json::{json, Value};

const GOOD: &str = "obk_good_000000000000000000000000";
const SUSPENDED: &str = "obk_suspended_0000000000000000000";
const FUTURE: &str = "obk_future_000000000000000000000000";
const PAST: &str = "obk_past_00000000000000000000000000";
const CLOSED: &str = "obk_closed_000000000000000000000000";

/// A weekday other than today's (UTC), for a window that is closed now.
fn another_day() -> &'static str {
    let days = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as usize
        % 7;
    days[(today + 3) % 7]
}

fn config(upstream: &MockUpstream) -> String {
    format!(
        "pools:\n{}\
seed:
  tenants:
    - {{ name: acme, allowed_models: [small, big-alias-target] }}
    - {{ name: frozen, status: suspended }}
    - {{ name: later, active_from: '2099-01-01T00:00:00Z' }}
    - {{ name: gone, active_until: '2001-01-01T00:00:00Z' }}
    - name: nightshift
      timezone: Asia/Tokyo
      weekly_windows: [{{ days: [{}], start: '00:00', end: '24:00' }}]
  models:
    - {{ name: small, pool: p, upstream_model: vendor/small-v2, upstream_key: sk-upstream-small }}
    - {{ name: big, pool: p, upstream_model: vendor/big }}
    - {{ name: retired, pool: p, enabled: false }}
  keys:
    - {{ tenant: acme, name: good, secret: {GOOD} }}
    - {{ tenant: frozen, name: k, secret: {SUSPENDED} }}
    - {{ tenant: later, name: k, secret: {FUTURE} }}
    - {{ tenant: gone, name: k, secret: {PAST} }}
    - {{ tenant: nightshift, name: k, secret: {CLOSED} }}
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{ max_body: 4096 }}
",
        pool("p", &[upstream], ""),
        another_day()
    )
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello there" }], "max_tokens": 3 })
}

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status(), status, "expected {status} {code}");
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).expect("OpenAI error JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[tokio::test]
async fn every_gate_answers_with_its_status_and_an_openai_error() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let c = client();
    let url = obleth.url("/v1/chat/completions");
    let post = |key: &str, body: Value| c.post(&url).bearer_auth(key).json(&body).send();

    expect_error(
        c.post(&url).json(&chat("small")).send().await.unwrap(),
        401,
        "missing_api_key",
    )
    .await;
    for (key, body, status, code) in [
        (
            "obk_wrong_0000000000000000000",
            chat("small"),
            401,
            "invalid_api_key",
        ),
        (SUSPENDED, chat("small"), 403, "tenant_suspended"),
        (FUTURE, chat("small"), 403, "tenant_inactive"),
        (PAST, chat("small"), 403, "tenant_inactive"),
        (CLOSED, chat("small"), 403, "outside_access_window"),
        (GOOD, chat("big"), 403, "model_not_allowed"),
        (GOOD, chat("nonexistent"), 404, "model_not_found"),
        (GOOD, chat("retired"), 404, "model_not_found"),
        (GOOD, json!({ "messages": [] }), 400, "missing_model"),
    ] {
        expect_error(post(key, body).await.unwrap(), status, code).await;
    }
    let bad_json = c
        .post(&url)
        .bearer_auth(GOOD)
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(bad_json, 400, "invalid_json").await;
    let huge =
        json!({ "model": "small", "messages": [{ "role": "user", "content": "x".repeat(5000) }] });
    expect_error(post(GOOD, huge).await.unwrap(), 413, "request_too_large").await;
    // Any POST is passed through (with a model to route by); a method no
    // endpoint takes is unknown.
    let unknown = c
        .get(obleth.url("/v1/images/generations"))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    expect_error(unknown, 404, "unknown_url").await;
    let modelless = c
        .post(obleth.url("/v1/images/generations"))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(modelless.status(), 400, "nothing to route by");
    assert_eq!(
        upstream.requests(),
        0,
        "no refused request reached the upstream"
    );

    // The good key, by bearer and by x-api-key: the upstream sees its own
    // model name and credential, never the client's key.
    for by_header in [false, true] {
        let req = c.post(&url).json(&chat("small"));
        let req = if by_header {
            req.header("x-api-key", GOOD)
        } else {
            req.bearer_auth(GOOD)
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-mock-saw-authorization"],
            "Bearer sk-upstream-small"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model"], "vendor/small-v2");
        assert_eq!(body["usage"]["completion_tokens"], 3);
    }
    // A model without an upstream key gets no Authorization at all.
    let admin = Admin::of(&obleth);
    admin
        .patch("/tenants/acme", json!({ "allowed_models": [] }), 200)
        .await;
    let resp = post(GOOD, chat("big")).await.unwrap();
    assert_eq!(resp.status(), 200, "allowlist change applied at once");
    assert!(resp.headers().get("x-mock-saw-authorization").is_none());

    // Streams pass through with the rewritten model.
    let stream = post(
        GOOD,
        json!({ "model": "small", "messages": [], "stream": true, "max_tokens": 4 }),
    )
    .await
    .unwrap();
    let text = stream.text().await.unwrap();
    assert_eq!(
        text.matches("\"model\":\"vendor/small-v2\"").count(),
        6,
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn models_endpoint_lists_what_the_key_may_use() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let resp = client()
        .get(obleth.url("/v1/models"))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["small"],
        "big is not on acme's allowlist, retired is disabled"
    );
    expect_error(
        client().get(obleth.url("/v1/models")).send().await.unwrap(),
        401,
        "missing_api_key",
    )
    .await;
}

#[tokio::test]
async fn disabling_rotating_and_deleting_keys_take_effect_at_once() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let admin = Admin::of(&obleth);
    let c = client();
    let url = obleth.url("/v1/chat/completions");

    let CreatedKey { id, secret } = admin.create_key("acme", json!({ "name": "ci" })).await;
    let call = |key: String| c.post(&url).bearer_auth(key).json(&chat("small")).send();
    assert_eq!(call(secret.clone()).await.unwrap().status(), 200);

    let key = format!("/keys/{id}");
    admin.patch(&key, json!({ "disabled": true }), 200).await;
    expect_error(call(secret.clone()).await.unwrap(), 403, "key_disabled").await;
    let expired = json!({ "disabled": false, "expires_at": "2000-01-01T00:00:00Z" });
    admin.patch(&key, expired, 200).await;
    expect_error(call(secret.clone()).await.unwrap(), 403, "key_expired").await;
    admin.patch(&key, json!({ "expires_at": null }), 200).await;
    assert_eq!(call(secret.clone()).await.unwrap().status(), 200);

    let rotated = admin
        .ok("POST", &format!("/keys/{id}/rotate"), None, 200)
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    expect_error(call(secret).await.unwrap(), 401, "invalid_api_key").await;
    assert_eq!(call(new_secret.clone()).await.unwrap().status(), 200);

    admin
        .patch("/tenants/acme", json!({ "status": "suspended" }), 200)
        .await;
    let suspended = call(new_secret.clone()).await.unwrap();
    expect_error(suspended, 403, "tenant_suspended").await;
    admin
        .patch("/tenants/acme", json!({ "status": "active" }), 200)
        .await;
    admin.ok("DELETE", &key, None, 204).await;
    expect_error(call(new_secret).await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn allowlists_name_canonical_models_and_aliases_cannot_take_a_name() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&format!(
        "pools:\n{}\
seed:
  tenants:
    - {{ name: only-a, allowed_models: [model-a] }}
    - {{ name: lists-an-alias, allowed_models: [b-alias] }}
  models:
    - {{ name: model-a, pool: p, upstream_model: vendor/a, aliases: [a-alias] }}
    - {{ name: model-b, pool: p, upstream_model: vendor/b, aliases: [b-alias] }}
  keys:
    - {{ tenant: only-a, name: k, secret: {GOOD} }}
    - {{ tenant: lists-an-alias, name: k, secret: {SUSPENDED} }}
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{}}
",
        pool("p", &[&upstream], "")
    ))
    .await;
    let c = client();
    let url = obleth.url("/v1/chat/completions");
    let post = |key: &str, model: &str| c.post(&url).bearer_auth(key).json(&chat(model)).send();
    let served = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["model"].as_str().unwrap_or_default().to_string()
    };

    // Allowing a model allows its aliases, and nothing else.
    assert_eq!(
        served(post(GOOD, "a-alias").await.unwrap()).await,
        "vendor/a"
    );
    // An alias on the allowlist grants nothing either: the check is on the
    // model the alias resolves to, which the list does not name.
    for key in [GOOD, SUSPENDED] {
        let refused = post(key, "b-alias").await.unwrap();
        expect_error(refused, 403, "model_not_allowed").await;
    }

    // An alias may not take another model's name (the reported bypass).
    let admin = Admin::of(&obleth);
    let (status, _) = admin
        .call(
            "PATCH",
            "/models/model-b",
            Some(json!({ "aliases": ["model-a"] })),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        served(post(GOOD, "model-a").await.unwrap()).await,
        "vendor/a"
    );
}

#[tokio::test]
async fn two_credentials_of_one_kind_are_refused() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    for name in ["authorization", "x-api-key"] {
        let value = |k: &str| {
            if name == "authorization" {
                format!("Bearer {k}")
            } else {
                k.to_string()
            }
        };
        let resp = client()
            .post(obleth.url("/v1/chat/completions"))
            .header(name, value(GOOD))
            .header(name, value("obk_other_000000000000000000000"))
            .json(&chat("small"))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_request").await;
    }
    assert_eq!(upstream.requests(), 0);
}
