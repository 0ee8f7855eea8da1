//! Budget scopes beyond the tenant, through the real binary, with both
//! budget stores (in-process and Redis): a key's own token rate and token
//! budget, USD budgets priced by the model, `GET /api/v1/keys/{id}/budget`,
//! the tenant's reservation given back when the key's scope refuses, and
//! `/v1/completions` and `/v1/embeddings` metered and settled at exactly
//! the usage the upstream reported. Spend is read only after settlement.

mod budget_common;
mod common;

use budget_common::*;
use common::*;
use serde_json::{json, Value};

/// The seeded key of tenant `acme`, which has no limits of its own.
const KEY: &str = "obk_budget_scopes_0000000000000";
const TENANT: &str = "/tenants/acme/budget";

/// obleth with one pool on `upstream`, tenant `tenant` (YAML flow map),
/// model `m` at $1 per million input and $2 per million output tokens, the
/// key [`KEY`], and budgets in Redis (under a fresh prefix) when `redis` is
/// set.
async fn start(upstream: &MockUpstream, tenant: &str, redis: bool) -> Obleth {
    let redis = if redis {
        format!(
            "redis:\n  url: redis://127.0.0.1:6379\n  prefix: '{}'\n",
            redis_prefix()
        )
    } else {
        String::new()
    };
    Obleth::start(&budget_config(upstream, tenant, KEY, &redis)).await
}

/// Creates a key of `acme` with `spec`; returns its id and secret.
async fn new_key(obleth: &Obleth, spec: Value) -> (String, String) {
    let key = Admin::of(obleth).create_key("acme", spec).await;
    (key.id, key.secret)
}

/// Asserts `resp` is a 200, showing the body when it is not.
async fn ok(resp: reqwest::Response) -> reqwest::Response {
    if resp.status() != 200 {
        let status = resp.status();
        panic!("{status}: {}", resp.text().await.unwrap_or_default());
    }
    resp
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_string())
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("an error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an OpenAI error: {body}"))
        .to_string()
}

async fn total_tokens(resp: reqwest::Response) -> u64 {
    let body: Value = resp.json().await.expect("a completion");
    body["usage"]["total_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage: {body}"))
}

/// A key's `tokens_per_minute` limits that key, with its own rate-limit
/// headers, and not the tenant's other keys.
async fn a_keys_token_rate(redis: bool) {
    let upstream = mock("vllm").await;
    let obleth = start(&upstream, "{ name: acme }", redis).await;
    let (id, secret) = new_key(
        &obleth,
        json!({ "name": "limited", "tokens_per_minute": 1000 }),
    )
    .await;
    let key = format!("/keys/{id}/budget");
    let body = chat(400);
    let estimate = body_len(&body) + 400;

    let first = ok(post_json(&obleth, &secret, "/v1/chat/completions", &body).await).await;
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("1000")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens"),
        Some((1000 - estimate).to_string())
    );
    let charged = total_tokens(first).await;
    // The tenant has no limits, so the key is the only scope settled.
    until_settled(&obleth, 1, &[&key]).await;
    let second = ok(post_json(&obleth, &secret, "/v1/chat/completions", &body).await).await;
    let charged = charged + total_tokens(second).await;
    until_settled(&obleth, 2, &[&key]).await;

    let limited = post_json(&obleth, &secret, "/v1/chat/completions", &body).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(
        header(&limited, "x-ratelimit-limit-tokens").as_deref(),
        Some("1000")
    );
    assert_eq!(
        header(&limited, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    let retry: u64 = header(&limited, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(limited).await, "rate_limit_exceeded");
    assert_eq!(upstream.requests(), 2, "the refused request was not sent");

    // The tenant's other key is not held to it, and the tenant has no
    // bucket, so no rate-limit headers either.
    let other = ok(post_json(&obleth, KEY, "/v1/chat/completions", &body).await).await;
    assert_eq!(header(&other, "x-ratelimit-limit-tokens"), None);
    other.bytes().await.expect("a body");

    let views = until_settled(&obleth, 2, &[&key, TENANT]).await;
    let (key_view, tenant_view) = (&views[0], &views[1]);
    assert_eq!(key_view["scope"], format!("k:{id}"), "{key_view}");
    assert_eq!(key_view["limits"]["tokens_per_minute"], 1000, "{key_view}");
    assert_eq!(
        standing(key_view, "committed_tokens"),
        charged,
        "{key_view}"
    );
    assert!(
        standing(key_view, "bucket_tokens") < 1000 - charged + 100,
        "the key's bucket is spent: {key_view}"
    );
    assert_eq!(
        standing(tenant_view, "committed_tokens"),
        0,
        "an unlimited tenant reserves and commits nothing: {tenant_view}"
    );
}

#[tokio::test]
async fn a_keys_own_token_rate_limits_that_key_only() {
    a_keys_token_rate(false).await;
}

#[tokio::test]
async fn a_keys_own_token_rate_in_redis_limits_that_key_only() {
    a_keys_token_rate(true).await;
}

/// A key's `budget_tokens` refuses that key once spent; the tenant's scope,
/// which reserved first, gets its reservation back at once.
async fn a_keys_token_budget(redis: bool) {
    let upstream = mock("vllm").await;
    let obleth = start(&upstream, "{ name: acme, budget_tokens: 100000 }", redis).await;
    let (id, secret) = new_key(&obleth, json!({ "name": "capped", "budget_tokens": 1000 })).await;
    let key = format!("/keys/{id}/budget");
    let body = chat(300);
    let estimate = body_len(&body) + 300;
    let (mut spent, mut settled) = (0, 0);
    loop {
        let resp = post_json(&obleth, &secret, "/v1/chat/completions", &body).await;
        if resp.status() != 200 {
            assert_eq!(resp.status(), 403);
            assert_eq!(error_code(resp).await, "budget_exhausted");
            break;
        }
        assert!(spent + estimate <= 1000, "admitted beyond the key's budget");
        spent += total_tokens(resp).await;
        // Both scopes settle each request.
        settled += 2;
        let views = until_settled(&obleth, settled, &[&key, TENANT]).await;
        for view in &views {
            assert_eq!(standing(view, "committed_tokens"), spent, "{view}");
        }
    }
    assert!(settled >= 2, "the key was refused at once");
    assert!(
        spent + estimate > 1000,
        "refused although {spent} + {estimate} fit"
    );
    // The refusal happened after the tenant's scope had reserved: that
    // reservation is given back before the 403 is sent.
    let key_view = Admin::of(&obleth).ok("GET", &key, None, 200).await;
    let tenant_view = Admin::of(&obleth).ok("GET", TENANT, None, 200).await;
    assert_eq!(
        standing(&tenant_view, "reserved_tokens"),
        0,
        "the tenant's reservation came back when the key refused: {tenant_view}"
    );
    assert_eq!(standing(&tenant_view, "reserved_usd_micros"), 0);
    assert_eq!(standing(&key_view, "reserved_tokens"), 0, "{key_view}");
    assert_eq!(standing(&tenant_view, "committed_tokens"), spent);
    assert_eq!(key_view["scope"], format!("k:{id}"), "{key_view}");
    assert_eq!(key_view["limits"]["budget_tokens"], 1000, "{key_view}");
    assert_eq!(key_view["limits"]["period"], "lifetime", "{key_view}");

    // The tenant's budget is far from spent: its other key is served.
    let other = ok(post_json(&obleth, KEY, "/v1/chat/completions", &body).await).await;
    let spent = spent + total_tokens(other).await;
    let views = until_settled(&obleth, settled + 1, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), spent);
    let unknown = Admin::of(&obleth)
        .call("GET", "/keys/key_000000000000000000000000/budget", None)
        .await;
    assert_eq!(unknown.0, 404, "{unknown:?}");
}

#[tokio::test]
async fn a_keys_token_budget_refuses_it_and_returns_the_tenants_reservation() {
    a_keys_token_budget(false).await;
}

#[tokio::test]
async fn a_keys_token_budget_in_redis_refuses_it_and_returns_the_tenants_reservation() {
    a_keys_token_budget(true).await;
}

/// USD micros a chat(100) costs as the mock reports it: 6 prompt tokens at
/// $1 and 100 completion tokens at $2 per million.
const CHAT_100_USD_MICROS: u64 = 6 + 2 * 100;

/// Spends with `secret` one settled request at a time until refused;
/// checks each admission and the refusal against `budget` (USD micros) as
/// seen in `scope`, and returns how many were admitted.
async fn spend_usd(
    obleth: &Obleth,
    secret: &str,
    scope: &str,
    budget: u64,
    settled: &mut u64,
    per_request: u64,
) -> u64 {
    let body = chat(100);
    // The reservation: prompt bytes at the input price plus max_tokens at
    // the output price, rounded up (floating point may add one micro).
    let estimate = body_len(&body) + 2 * 100;
    let admin = Admin::of(obleth);
    let mut admitted = 0;
    loop {
        let before = standing(
            &admin.ok("GET", scope, None, 200).await,
            "committed_usd_micros",
        );
        let resp = post_json(obleth, secret, "/v1/chat/completions", &body).await;
        if resp.status() != 200 {
            assert_eq!(resp.status(), 403);
            assert_eq!(error_code(resp).await, "budget_exhausted");
            assert!(
                before + estimate + 1 > budget,
                "refused although {before} + {estimate} fit {budget}"
            );
            return admitted;
        }
        assert!(
            before + estimate <= budget,
            "admitted beyond the USD budget: {before} + {estimate} > {budget}"
        );
        assert_eq!(total_tokens(resp).await, 106);
        admitted += 1;
        *settled += per_request;
        let views = until_settled(obleth, *settled, &[scope, TENANT]).await;
        assert_eq!(
            standing(&views[0], "committed_usd_micros"),
            before + CHAT_100_USD_MICROS,
            "charged at the model's prices: {}",
            views[0]
        );
    }
}

async fn usd_budgets(redis: bool) {
    let upstream = mock("vllm").await;
    // $0.002 for the tenant, $0.0005 for one of its keys.
    let obleth = start(&upstream, "{ name: acme, budget_usd: 0.002 }", redis).await;
    let (id, secret) = new_key(&obleth, json!({ "name": "small", "budget_usd": 0.0005 })).await;
    let key = format!("/keys/{id}/budget");
    let mut settled = 0;
    let by_key = spend_usd(&obleth, &secret, &key, 500, &mut settled, 2).await;
    assert_eq!(by_key, 2, "two requests fit $0.0005");
    let by_tenant = spend_usd(&obleth, KEY, TENANT, 2000, &mut settled, 1).await;
    assert!(by_tenant > 0);
    let views = until_settled(&obleth, settled, &[&key, TENANT]).await;
    let (key_view, tenant_view) = (&views[0], &views[1]);
    assert_eq!(key_view["limits"]["budget_usd_micros"], 500, "{key_view}");
    assert_eq!(
        standing(key_view, "committed_usd_micros"),
        by_key * CHAT_100_USD_MICROS
    );
    assert_eq!(
        tenant_view["limits"]["budget_usd_micros"], 2000,
        "{tenant_view}"
    );
    assert_eq!(
        standing(tenant_view, "committed_usd_micros"),
        (by_key + by_tenant) * CHAT_100_USD_MICROS,
        "{tenant_view}"
    );
    assert_eq!(
        standing(tenant_view, "committed_tokens"),
        (by_key + by_tenant) * 106,
        "tokens are committed alongside: {tenant_view}"
    );
    assert!(standing(tenant_view, "committed_usd_micros") <= 2000);
}

#[tokio::test]
async fn usd_budgets_charge_the_models_prices_and_refuse_when_spent() {
    usd_budgets(false).await;
}

#[tokio::test]
async fn usd_budgets_in_redis_charge_the_models_prices_and_refuse_when_spent() {
    usd_budgets(true).await;
}

#[tokio::test]
async fn completions_and_embeddings_are_metered_and_settled_at_the_reported_usage() {
    let upstream = mock("vllm").await;
    let obleth = start(&upstream, "{ name: acme, budget_tokens: 100000 }", false).await;

    // prompt: 4 words; completion: max_tokens.
    let completion = json!({ "model": "m", "prompt": "a b c d", "max_tokens": 7 });
    let resp = post_json(&obleth, KEY, "/v1/completions", &completion).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("a text completion");
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11 })
    );
    let views = until_settled(&obleth, 1, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 11);
    assert_eq!(standing(&views[0], "committed_usd_micros"), 4 + 2 * 7);

    // Streamed without asking for usage: obleth asks, meters and strips it.
    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    let resp = post_json(&obleth, KEY, "/v1/completions", &streamed).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("a stream");
    assert_eq!(text.matches("\"text\":\"tok").count(), 7, "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "usage was not asked for: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let views = until_settled(&obleth, 2, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 22);

    // Embeddings: prompt tokens only (2 + 1 words).
    let embeddings = json!({ "model": "m", "input": ["a b", "c"] });
    let resp = post_json(&obleth, KEY, "/v1/embeddings", &embeddings).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("embeddings");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 3, "{body}");
    let views = until_settled(&obleth, 3, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 25, "{}", views[0]);
    assert_eq!(
        standing(&views[0], "committed_usd_micros"),
        2 * (4 + 2 * 7) + 3,
        "{}",
        views[0]
    );
    assert_eq!(
        settled_as(&obleth, "charged").await,
        3.0,
        "every one charged at reported usage, none estimated"
    );
    assert_eq!(tokens_metered(&obleth, "input").await, 11.0);
    assert_eq!(tokens_metered(&obleth, "output").await, 14.0);
}
