//! Token budgets through the real binary: the per-minute bucket answers 429
//! with Retry-After and OpenAI's rate-limit headers, term budgets are never
//! overspent under concurrency and committed spend equals what the upstream
//! reported, streams are metered (usage requested and stripped again), and
//! a dead Redis is survived as `fail_open` says.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use serde_json::{json, Value};

const KEY: &str = "obk_budget_tests_00000000000000";

fn config(
    upstream: &MockUpstream,
    tenant: &str,
    redis: Option<(&str, &str)>,
    fail_open: bool,
) -> String {
    let redis = redis.map_or(String::new(), |(url, prefix)| {
        format!("redis:\n  url: {url}\n  prefix: '{prefix}'\n")
    });
    format!(
        "pools:\n{}{redis}budgets:\n  fail_open: {fail_open}\n\
         seed:\n  tenants: [{tenant}]\n  models: [{{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], "")
    )
}

fn chat(max_tokens: u64) -> Value {
    json!({ "model": "m", "messages": [{ "role": "user", "content": "one two three" }], "max_tokens": max_tokens })
}

async fn post(obleth: &Obleth, body: &Value) -> reqwest::Response {
    client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The tenant's committed spend in Redis.
async fn committed(prefix: &str, obleth: &Obleth) -> (u64, u64) {
    let tenant = Admin::of(obleth)
        .ok("GET", "/tenants/acme", None, 200)
        .await;
    let id = tenant["id"].as_str().unwrap();
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}budget:{{t:{id}}}:spend");
    let tokens: Option<u64> = conn.hget(&key, "tokens").await.unwrap();
    let usd: Option<u64> = conn.hget(&key, "usd").await.unwrap();
    (tokens.unwrap_or(0), usd.unwrap_or(0))
}

#[tokio::test]
async fn an_exhausted_token_bucket_answers_429_with_retry_after() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, tokens_per_minute: 1000 }",
        None,
        true,
    ))
    .await;
    // Each request reserves its body size (about 80) plus 400 and is
    // charged the reported 6 + 400 tokens: two fit in 1000, the third waits.
    let first = post(&obleth, &chat(400)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "1000");
    let remaining: u64 = first.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((400..600).contains(&remaining), "{remaining}");
    assert!(first.headers()["x-ratelimit-reset-tokens"]
        .to_str()
        .unwrap()
        .ends_with("ms"));
    first.bytes().await.unwrap();
    assert_eq!(post(&obleth, &chat(400)).await.status(), 200);
    let limited = post(&obleth, &chat(400)).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{:?}", limited.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.headers()["x-ratelimit-remaining-tokens"], "0");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        upstream.requests(),
        2,
        "the refused request never reached the upstream"
    );
    // A request that could never fit the bucket says so.
    let huge = post(&obleth, &chat(5000)).await;
    assert_eq!(huge.status(), 429);
    assert_eq!(
        huge.json::<Value>().await.unwrap()["error"]["code"],
        "request_too_large"
    );
}

#[tokio::test]
async fn concurrent_requests_never_overspend_and_commit_exactly_the_reported_usage() {
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, budget_tokens: 3000 }",
        Some(("redis://127.0.0.1:6379", &prefix)),
        true,
    ))
    .await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = obleth.url("/v1/chat/completions");
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&chat(100 + i))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                (status, body["usage"]["total_tokens"].as_u64().unwrap_or(0))
            })
        })
        .collect();
    let (mut admitted, mut refused, mut reported) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, tokens) => {
                admitted += 1;
                reported += tokens;
            }
            (403, _) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        admitted > 0 && refused > 0,
        "{admitted} admitted, {refused} refused"
    );
    let (tokens, usd) = committed(&prefix, &obleth).await;
    assert_eq!(
        tokens, reported,
        "committed spend equals the upstream-reported usage"
    );
    assert!(tokens <= 3000, "overspent: {tokens}");
    assert!(usd > 0);
}

#[tokio::test]
async fn streams_are_metered_and_the_added_usage_event_is_removed() {
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, budget_tokens: 100000 }",
        Some(("redis://127.0.0.1:6379", &prefix)),
        true,
    ))
    .await;
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 5, "stream": true });
    let text = post(&obleth, &body).await.text().await.unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "the client did not ask for usage: {text}"
    );
    assert_eq!(text.matches("\"content\":\"tok").count(), 5);
    assert!(text.ends_with("data: [DONE]\n\n"));
    // prompt 1 word + 3, completion 5: charged although the client saw no usage.
    assert_eq!(committed(&prefix, &obleth).await.0, 9);

    let mut asked = body.clone();
    asked["stream_options"] = json!({ "include_usage": true });
    let text = post(&obleth, &asked).await.text().await.unwrap();
    assert!(
        text.contains("\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5"),
        "{text}"
    );
    assert_eq!(committed(&prefix, &obleth).await.0, 18);

    // An upstream failure refunds the whole reservation.
    let failed = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-mock-status", "500")
        .json(&chat(50))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    failed.bytes().await.unwrap();
    assert_eq!(committed(&prefix, &obleth).await.0, 18);
}

/// A redis-server of the test's own, to be killed.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_dead_redis_is_survived_as_fail_open_says() {
    let upstream = mock("vllm").await;
    for fail_open in [true, false] {
        let mut redis = OwnRedis::start();
        let url = format!("redis://127.0.0.1:{}", redis.port);
        let obleth = Obleth::start(&config(
            &upstream,
            "{ name: acme, tokens_per_minute: 100000 }",
            Some((&url, "t:")),
            fail_open,
        ))
        .await;
        assert_eq!(
            post(&obleth, &chat(10)).await.status(),
            200,
            "caches the key and works with redis up"
        );
        let _ = redis.child.kill();
        let _ = redis.child.wait();
        let started = std::time::Instant::now();
        let resp = post(&obleth, &chat(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no hanging: {:?}",
            started.elapsed()
        );
        if fail_open {
            assert_eq!(resp.status(), 200);
            assert_eq!(obleth.metric("obleth_budget_fail_open_total").await, 1.0);
        } else {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            assert_eq!(
                resp.json::<Value>().await.unwrap()["error"]["code"],
                "budget_unavailable"
            );
        }
    }
}

#[tokio::test]
async fn operators_read_and_reset_budgets_and_the_reset_is_audited() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, budget_tokens: 1000, tokens_per_minute: 5000 }",
        None,
        true,
    ))
    .await;
    let admin = Admin::of(&obleth);
    let body: Value = post(&obleth, &chat(50)).await.json().await.unwrap();
    let reported = body["usage"]["total_tokens"].as_u64().unwrap();
    let budget = admin.ok("GET", "/tenants/acme/budget", None, 200).await;
    assert_eq!(budget["standing"]["committed_tokens"], reported, "{budget}");
    assert_eq!(budget["standing"]["reserved_tokens"], 0);
    assert_eq!(budget["limits"]["budget_tokens"], 1000);
    assert!(budget["standing"]["bucket_tokens"].as_u64().unwrap() <= 5000);

    // Spend the rest, get refused, reset, get served again.
    while post(&obleth, &chat(300)).await.status() == 200 {}
    assert_eq!(post(&obleth, &chat(300)).await.status(), 403);
    let after = admin
        .ok("POST", "/tenants/acme/budget/reset", None, 200)
        .await;
    assert_eq!(after["standing"]["committed_tokens"], 0);
    assert_eq!(post(&obleth, &chat(300)).await.status(), 200);
    let audit = admin
        .ok("GET", "/audit?entity_type=tenant", None, 200)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "tenant.budget_reset"),
        "{audit}"
    );
}

#[tokio::test]
async fn timeouts_refund_and_a_client_leaving_mid_stream_pays_what_was_generated() {
    let upstream = mock("vllm").await;
    let config = config(
        &upstream,
        "{ name: acme, budget_tokens: 100000 }",
        None,
        true,
    )
    .replace(
        "    servers:",
        "    retries: 0\n    timeouts: { read: 300ms }\n    servers:",
    );
    let obleth = Obleth::start(&config).await;
    let admin = Admin::of(&obleth);
    let committed = || async {
        admin.ok("GET", "/tenants/acme/budget", None, 200).await["standing"]["committed_tokens"]
            .as_u64()
            .unwrap()
    };

    let timed_out = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-mock-latency-ms", "2000")
        .json(&chat(50))
        .send()
        .await
        .unwrap();
    assert_eq!(timed_out.status(), 504);
    assert_eq!(committed().await, 0, "a timeout is refunded");

    // 200 tokens at 20/s: leave after the first few.
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "go" }], "max_tokens": 200, "stream": true });
    let resp = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-mock-tps", "20")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = futures_util::StreamExt::fuse(resp.bytes_stream());
    for _ in 0..3 {
        futures_util::StreamExt::next(&mut stream).await;
    }
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let charged = loop {
        let c = committed().await;
        if c > 0 || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(charged > 0, "what was generated is charged");
    assert!(charged < 200, "only what was generated: {charged}");
    let settled = obleth
        .metric("obleth_budget_settlements_total{outcome=\"estimated\"}")
        .await;
    assert_eq!(
        settled, 1.0,
        "no usage arrived, so the streamed text was counted"
    );
}

#[tokio::test]
async fn a_client_leaving_before_the_first_byte_is_refunded() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, budget_tokens: 100000 }",
        None,
        true,
    ))
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-mock-latency-ms", "1000")
        .json(&chat(50))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while obleth
        .metric("obleth_budget_settlements_total{outcome=\"refunded\"}")
        .await
        < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let budget = Admin::of(&obleth)
        .ok("GET", "/tenants/acme/budget", None, 200)
        .await;
    assert_eq!(budget["standing"]["committed_tokens"], 0, "{budget}");
    assert_eq!(budget["standing"]["reserved_tokens"], 0, "{budget}");
    let line = obleth.access_lines(1).await.remove(0);
    assert!(
        line.contains(" 499 "),
        "recorded as a client disconnect: {line}"
    );
}

#[tokio::test]
async fn reservations_cover_every_choice_and_limits_must_be_integers() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, tokens_per_minute: 1000 }",
        None,
        true,
    ))
    .await;
    // 20 choices of up to 100 tokens may cost 2000: more than the bucket
    // holds, however small one choice is.
    let mut many = chat(100);
    many["n"] = json!(20);
    let resp = post(&obleth, &many).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    // A limit the upstream would read differently from obleth is refused
    // before anything is reserved or sent.
    for limit in [json!(1.5), json!("100"), json!(1e30), json!(-5)] {
        for field in ["max_tokens", "max_completion_tokens"] {
            let mut body = chat(1);
            body.as_object_mut().unwrap().remove("max_tokens");
            body[field] = limit.clone();
            let resp = post(&obleth, &body).await;
            assert_eq!(resp.status(), 400, "{field}: {limit}");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"]["code"], "invalid_value", "{err}");
            assert!(
                err["error"]["message"].as_str().unwrap().contains(field),
                "{err}"
            );
        }
    }
    assert_eq!(upstream.requests(), 0);
    assert_eq!(post(&obleth, &chat(100)).await.status(), 200);
}
