//! Fair admission through the real binary: requests are labelled fast,
//! queued, brownout or rejected; a full queue answers 429 and a long wait
//! 503, both with Retry-After; brownout caps the output the upstream is
//! asked for; capacity changes take effect live; caps hold a tenant's or a
//! key's requests back while others pass; a client that leaves the queue
//! frees its place and pays nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "obk_admission_tests_000000000000";

/// One model `m` of `pool_size` slots behind `upstream`, and the given
/// `admission:` settings.
fn config(upstream: &MockUpstream, pool_size: u32, admission: &str, tenant: &str) -> String {
    format!(
        "pools:\n{}admission: {admission}\n\
         seed:\n  tenants: [{tenant}]\n  models: [{{ name: m, pool: p, max_in_flight: {pool_size} }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], "")
    )
}

/// A mock upstream and obleth on [`config`] in front of it, with the admin
/// API to watch its capacity through.
async fn start(pool_size: u32, admission: &str, tenant: &str) -> (MockUpstream, Obleth, Admin) {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream, pool_size, admission, tenant)).await;
    let admin = Admin::of(&obleth);
    (upstream, obleth, admin)
}

/// The tenant most tests here need: `acme` without limits of its own.
const ACME: &str = "{ name: acme }";

/// A chat request that the mock answers after `latency_ms`.
async fn chat(obleth: &Obleth, key: &str, latency_ms: u64, max_tokens: u64) -> reqwest::Response {
    chat_request(obleth, key)
        .header("x-mock-latency-ms", latency_ms.to_string())
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": max_tokens }))
        .send()
        .await
        .expect("obleth answers")
}

fn spawn_chat(
    obleth: &Obleth,
    key: &str,
    latency_ms: u64,
) -> tokio::task::JoinHandle<(u16, reqwest::header::HeaderMap, Value, Duration)> {
    let (url, key) = (obleth.url("/v1/chat/completions"), key.to_string());
    tokio::spawn(async move {
        let started = Instant::now();
        let resp = client()
            .post(url)
            .bearer_auth(key)
            .header("x-mock-latency-ms", latency_ms.to_string())
            .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 50 }))
            .send()
            .await
            .expect("obleth answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, headers, body, started.elapsed())
    })
}

/// Waits until nothing is in flight, then starts a request of `key` that
/// holds a slot for `latency_ms`; returns once it is in flight.
async fn hold_a_slot(
    obleth: &Obleth,
    admin: &Admin,
    key: &str,
    latency_ms: u64,
) -> tokio::task::JoinHandle<(u16, reqwest::header::HeaderMap, Value, Duration)> {
    until(admin, "in_flight", 0).await;
    let holder = spawn_chat(obleth, key, latency_ms);
    until(admin, "in_flight", 1).await;
    holder
}

/// Waits until the capacity view shows `n` requests `queued` or `in_flight`.
async fn until(admin: &Admin, field: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = admin.ok("GET", "/capacity", None, 200).await;
        if view[field] == n {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} {field}: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn label(obleth: &Obleth, code: &str, admission: &str) -> f64 {
    let class = &code[..1];
    obleth
        .metric(&format!(
            "obleth_requests_total{{admission=\"{admission}\",code=\"{code}\",status=\"{class}xx\"}}"
        ))
        .await
}

#[tokio::test]
async fn requests_are_admitted_fast_queued_or_in_brownout_with_the_output_capped() {
    let admission = "{ brownout_wait: 1s, brownout_max_tokens: 5 }";
    let (_upstream, obleth, admin) = start(1, admission, ACME).await;

    // A short wait is served as asked.
    let holder = hold_a_slot(&obleth, &admin, KEY, 200).await;
    let queued = chat(&obleth, KEY, 0, 50).await;
    assert_eq!(queued.status(), 200);
    assert!(queued.headers().get("x-obleth-degraded").is_none());
    let body: Value = queued.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 50);
    assert_eq!(holder.await.unwrap().0, 200);

    // A wait past brownout_wait is served with its output capped.
    let holder = hold_a_slot(&obleth, &admin, KEY, 2000).await;
    let degraded = chat(&obleth, KEY, 0, 50).await;
    assert_eq!(degraded.status(), 200);
    assert_eq!(
        degraded.headers()["x-obleth-degraded"],
        "brownout; max_tokens=5"
    );
    let body: Value = degraded.json().await.unwrap();
    assert_eq!(
        body["usage"]["completion_tokens"], 5,
        "the upstream was asked for at most 5 tokens"
    );
    assert_eq!(holder.await.unwrap().0, 200);

    assert_eq!(label(&obleth, "200", "fast").await, 2.0);
    assert_eq!(label(&obleth, "200", "queued").await, 1.0);
    assert_eq!(label(&obleth, "200", "brownout").await, 1.0);
    let unauthenticated = chat(&obleth, "obk_wrong", 0, 5).await;
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(label(&obleth, "401", "rejected").await, 1.0);
    let metrics = obleth.metrics_text().await;
    for family in [
        "obleth_in_flight 0",
        "obleth_queue_depth 0",
        "obleth_pool_queue_depth{pool=\"m\"} 0",
        "obleth_queue_wait_seconds_count{admission=\"brownout\"} 1",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_long_wait_503_both_with_retry_after() {
    let admission = "{ queue_per_pool: 2, timeout: 700ms, brownout_wait: 0 }";
    let (upstream, obleth, admin) = start(1, admission, ACME).await;
    let holder = hold_a_slot(&obleth, &admin, KEY, 2500).await;
    let waiters = [spawn_chat(&obleth, KEY, 0), spawn_chat(&obleth, KEY, 0)];
    until(&admin, "queued", 2).await;

    let started = Instant::now();
    let refused = chat(&obleth, KEY, 0, 5).await;
    assert_eq!(refused.status(), 429);
    assert!(started.elapsed() < Duration::from_millis(1000), "at once");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    for waiter in waiters {
        let (status, headers, body, waited) = waiter.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "queue_timeout");
        assert_eq!(
            headers["retry-after"], "5",
            "the documented wait after a queue timeout"
        );
        assert!(waited >= Duration::from_millis(650), "{waited:?}");
    }
    assert_eq!(holder.await.unwrap().0, 200);
    assert_eq!(
        upstream.requests(),
        1,
        "refused requests never went upstream"
    );
    assert_eq!(label(&obleth, "429", "rejected").await, 1.0);
    assert_eq!(label(&obleth, "503", "rejected").await, 2.0);
}

#[tokio::test]
async fn capacity_and_pool_size_changes_take_effect_live_and_are_audited() {
    let admission = "{ global_max_in_flight: 1, brownout_wait: 0 }";
    let (_upstream, obleth, admin) = start(4, admission, ACME).await;
    let view = admin.ok("GET", "/capacity", None, 200).await;
    assert_eq!(view["global_max_in_flight"], 1);
    assert_eq!(view["pools"][0]["max_in_flight"], 4, "{view}");

    // The global ceiling of 1 holds the second request back ...
    let holder = hold_a_slot(&obleth, &admin, KEY, 3000).await;
    let waiter = spawn_chat(&obleth, KEY, 0);
    until(&admin, "queued", 1).await;
    let share = admin.ok("GET", "/fairshare", None, 200).await;
    let pool = &share["pools"][0];
    assert_eq!(
        (pool["in_flight"].clone(), pool["queued"].clone()),
        (json!(1), json!(1)),
        "{share}"
    );
    assert_eq!(pool["tenants"][0]["share"], 1.0, "{share}");
    // ... until it is raised.
    let raised = admin
        .put("/capacity", json!({ "global_max_in_flight": 2 }), 200)
        .await;
    assert_eq!(raised["global_max_in_flight"], 2);
    let (status, _, _, waited) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_millis(2500),
        "admitted before the holder ended: {waited:?}"
    );
    assert_eq!(holder.await.unwrap().0, 200);
    admin
        .put("/capacity", json!({ "global_max_in_flight": 0 }), 400)
        .await;
    let audit = admin
        .ok("GET", "/audit?entity_type=capacity", None, 200)
        .await;
    assert!(audit.to_string().contains("capacity.update"), "{audit}");

    // A model pool shrunk to one slot through the models API.
    admin
        .put("/capacity", json!({ "global_max_in_flight": 8 }), 200)
        .await;
    admin
        .patch("/models/m", json!({ "max_in_flight": 1 }), 200)
        .await;
    let view = admin.ok("GET", "/capacity", None, 200).await;
    assert_eq!(view["pools"][0]["max_in_flight"], 1, "{view}");
    let holder = hold_a_slot(&obleth, &admin, KEY, 3000).await;
    let waiter = spawn_chat(&obleth, KEY, 0);
    until(&admin, "queued", 1).await;
    admin
        .patch("/models/m", json!({ "max_in_flight": 2 }), 200)
        .await;
    let (status, _, _, waited) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
    holder.await.unwrap();
}

#[tokio::test]
async fn tenant_and_key_caps_hold_their_requests_back_while_others_pass() {
    let tenants = "{ name: acme }, { name: capped, max_in_flight: 1 }";
    let (_upstream, obleth, admin) = start(8, "{ brownout_wait: 0 }", tenants).await;
    let capped_key = admin
        .create_key("capped", json!({ "name": "c" }))
        .await
        .secret;
    let single_key = admin
        .create_key("acme", json!({ "name": "single", "max_in_flight": 1 }))
        .await
        .secret;

    for key in [&capped_key, &single_key] {
        let first = hold_a_slot(&obleth, &admin, key, 2000).await;
        let second = spawn_chat(&obleth, key, 0);
        until(&admin, "queued", 1).await;
        // Anyone else passes at once.
        let started = Instant::now();
        assert_eq!(chat(&obleth, KEY, 0, 5).await.status(), 200);
        assert!(started.elapsed() < Duration::from_millis(1500));
        let (status, _, _, waited) = second.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            waited >= Duration::from_millis(1500),
            "held back: {waited:?}"
        );
        first.await.unwrap();
    }
}

#[tokio::test]
async fn a_client_leaving_the_queue_frees_its_place_and_pays_nothing() {
    let tenant = "{ name: acme, budget_tokens: 100000 }";
    let (upstream, obleth, admin) = start(1, "{ brownout_wait: 0 }", tenant).await;
    let holder = hold_a_slot(&obleth, &admin, KEY, 1500).await;
    let gave_up = chat_request(&obleth, KEY)
        .timeout(Duration::from_millis(300))
        .json(&json!({ "model": "m", "messages": [], "max_tokens": 50 }))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    // It left the queue long before the slot would have come free.
    until(&admin, "queued", 0).await;
    assert!(
        !holder.is_finished(),
        "the holder is still running, so the queue emptied by the client leaving"
    );
    let (status, _, body, _) = holder.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(upstream.requests(), 1, "the leaver never went upstream");
    let budget = admin.ok("GET", "/tenants/acme/budget", None, 200).await;
    let charged = body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(budget["standing"]["committed_tokens"], charged, "{budget}");
    assert_eq!(budget["standing"]["reserved_tokens"], 0, "{budget}");
    let left = "obleth_requests_total{admission=\"rejected\",code=\"499\",status=\"4xx\"}";
    obleth
        .wait_at_least(left, 1.0, Duration::from_secs(5))
        .await;
}
