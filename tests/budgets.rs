//! Token budgets through the real binary: the per-minute bucket answers 429
//! with Retry-After and OpenAI's rate-limit headers (in-process and in
//! Redis), term budgets are never overspent under concurrency and committed
//! spend equals what the upstream reported, streams are metered (usage
//! requested and stripped again), a client leaving mid-stream pays exactly
//! what was generated, and a dead Redis is survived as `fail_open` says.
//! Spend is read only after settlement (see `budget_common`).

mod budget_common;
mod common;

use std::time::{Duration, Instant};

use budget_common::*;
use common::*;
use futures_util::StreamExt;
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
    budget_config(
        upstream,
        tenant,
        KEY,
        &format!("{redis}budgets:\n  fail_open: {fail_open}\n"),
    )
}

/// obleth with in-process budgets, failing open, for `tenant`.
async fn start_local(upstream: &MockUpstream, tenant: &str) -> Obleth {
    Obleth::start(&config(upstream, tenant, None, true)).await
}

/// obleth with budgets in the shared Redis under `prefix`, failing open.
async fn start_in_redis(upstream: &MockUpstream, tenant: &str, prefix: &str) -> Obleth {
    let redis = Some(("redis://127.0.0.1:6379", prefix));
    Obleth::start(&config(upstream, tenant, redis, true)).await
}

async fn post(obleth: &Obleth, body: &Value) -> reqwest::Response {
    post_chat(obleth, KEY, body).await
}

const TENANT: &str = "/tenants/acme/budget";
/// `acme` with a term budget that no test here comes near spending.
const ROOMY: &str = "{ name: acme, budget_tokens: 100000 }";

/// The tenant's committed spend in Redis.
async fn committed(prefix: &str, obleth: &Obleth) -> (u64, u64) {
    let tenant = Admin::of(obleth)
        .ok("GET", "/tenants/acme", None, 200)
        .await;
    let id = tenant["id"].as_str().unwrap();
    let mut conn = redis_connection().await;
    let key = format!("{prefix}budget:{{t:{id}}}:spend");
    let tokens: Option<u64> = conn.hget(&key, "tokens").await.unwrap();
    let usd: Option<u64> = conn.hget(&key, "usd").await.unwrap();
    (tokens.unwrap_or(0), usd.unwrap_or(0))
}

/// Spends a 1000-token bucket with two requests and checks the third's
/// 429 and every rate-limit header against the bucket's arithmetic.
async fn an_exhausted_bucket_answers_429(redis: Option<&str>) {
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let obleth = Obleth::start(&config(
        &upstream,
        "{ name: acme, tokens_per_minute: 1000 }",
        redis.map(|url| (url, prefix.as_str())),
        true,
    ))
    .await;
    // Each request reserves its body's bytes plus max_tokens and is
    // charged the reported 6 + 400 tokens: two fit in 1000, the third
    // waits until the bucket refilled enough.
    let body = chat(400);
    let estimate = body_len(&body) + 400;
    let started = Instant::now();
    let header = |resp: &reqwest::Response, name: &str| -> String {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", resp.headers()))
            .to_str()
            .expect("ascii")
            .to_string()
    };
    let first = post(&obleth, &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "1000");
    // The bucket starts full, so exactly the estimate is gone.
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens"),
        (1000 - estimate).to_string()
    );
    // Refilling `estimate` at 1000 per minute takes estimate * 60 ms.
    assert_eq!(
        header(&first, "x-ratelimit-reset-tokens"),
        format!("{}ms", estimate * 60)
    );
    let used: Value = first.json().await.expect("a completion");
    let charged = used["usage"]["total_tokens"].as_u64().expect("usage");
    assert_eq!(charged, 406);
    until_settled(&obleth, 1, &[TENANT]).await;

    let second = post(&obleth, &body).await;
    assert_eq!(second.status(), 200);
    // The unused part of the first reservation came back; time refilled
    // at most elapsed/60 tokens more.
    let remaining: u64 = header(&second, "x-ratelimit-remaining-tokens")
        .parse()
        .expect("a number");
    let floor = 1000 - charged - estimate;
    let refill = started.elapsed().as_millis() as u64 / 60 + 1;
    assert!(
        (floor..=floor + refill).contains(&remaining),
        "{remaining} not in {floor}..={}",
        floor + refill
    );
    second.bytes().await.expect("a body");
    until_settled(&obleth, 2, &[TENANT]).await;

    let limited = post(&obleth, &body).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert_eq!(limited.status(), 429);
    // The bucket holds 1000 - 2 * 406 plus what time refilled; the wait is
    // what is missing at 1000 per minute, rounded up to whole seconds.
    let level = 1000 - 2 * charged;
    let latest = ((estimate - level) * 60).div_ceil(1000);
    let earliest = (estimate.saturating_sub(level + elapsed_ms / 60 + 1) * 60).div_ceil(1000);
    let retry: u64 = header(&limited, "retry-after").parse().expect("seconds");
    assert!(
        (earliest..=latest).contains(&retry),
        "Retry-After {retry} not in {earliest}..={latest}"
    );
    assert_eq!(header(&limited, "x-ratelimit-limit-tokens"), "1000");
    assert_eq!(header(&limited, "x-ratelimit-remaining-tokens"), "0");
    assert_eq!(header(&limited, "x-ratelimit-reset-tokens"), "60000ms");
    let refused: Value = limited.json().await.expect("an error body");
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded", "{refused}");
    assert_eq!(
        upstream.requests(),
        2,
        "the refused request never reached the upstream"
    );
    // A request that could never fit the bucket says so.
    let huge = post(&obleth, &chat(5000)).await;
    assert_eq!(huge.status(), 429);
    assert_eq!(
        huge.json::<Value>().await.expect("an error body")["error"]["code"],
        "request_too_large"
    );
    // Refusals reserve nothing and settle nothing.
    let budget = until_settled(&obleth, 2, &[TENANT]).await;
    assert_eq!(
        standing(&budget[0], "committed_tokens"),
        2 * charged,
        "the two admitted requests, as reported: {}",
        budget[0]
    );
}

#[tokio::test]
async fn an_exhausted_token_bucket_answers_429_with_retry_after() {
    an_exhausted_bucket_answers_429(None).await;
}

#[tokio::test]
async fn an_exhausted_token_bucket_in_redis_answers_429_with_the_same_headers() {
    an_exhausted_bucket_answers_429(Some("redis://127.0.0.1:6379")).await;
}

#[tokio::test]
async fn concurrent_requests_never_overspend_and_commit_exactly_the_reported_usage() {
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let obleth = start_in_redis(&upstream, "{ name: acme, budget_tokens: 3000 }", &prefix).await;
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
    until_settled(&obleth, admitted, &[TENANT]).await;
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
    let obleth = start_in_redis(&upstream, ROOMY, &prefix).await;
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 5, "stream": true });
    let text = post(&obleth, &body).await.text().await.unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "the client did not ask for usage: {text}"
    );
    assert_eq!(text.matches("\"content\":\"tok").count(), 5);
    assert!(text.ends_with("data: [DONE]\n\n"));
    // prompt 1 word + 3, completion 5: charged although the client saw no usage.
    until_settled(&obleth, 1, &[TENANT]).await;
    assert_eq!(committed(&prefix, &obleth).await.0, 9);

    let mut asked = body.clone();
    asked["stream_options"] = json!({ "include_usage": true });
    let text = post(&obleth, &asked).await.text().await.unwrap();
    assert!(
        text.contains("\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5"),
        "{text}"
    );
    until_settled(&obleth, 2, &[TENANT]).await;
    assert_eq!(committed(&prefix, &obleth).await.0, 18);

    // An upstream failure refunds the whole reservation.
    let failed = chat_request(&obleth, KEY)
        .header("x-mock-status", "500")
        .json(&chat(50))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    failed.bytes().await.expect("the error body");
    until_settled(&obleth, 3, &[TENANT]).await;
    assert_eq!(committed(&prefix, &obleth).await.0, 18);
    assert_eq!(settled_as(&obleth, "refunded").await, 1.0);
}

#[tokio::test]
async fn a_dead_redis_is_survived_as_fail_open_says() {
    let upstream = mock("vllm").await;
    for fail_open in [true, false] {
        let mut redis = OwnRedis::start().await;
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
            assert_eq!(resp.headers()["retry-after"], "1");
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
    let obleth = start_local(
        &upstream,
        "{ name: acme, budget_tokens: 1000, tokens_per_minute: 5000 }",
    )
    .await;
    let admin = Admin::of(&obleth);
    let body: Value = post(&obleth, &chat(50))
        .await
        .json()
        .await
        .expect("a completion");
    let reported = body["usage"]["total_tokens"].as_u64().expect("usage");
    let budget = until_settled(&obleth, 1, &[TENANT]).await.remove(0);
    assert_eq!(standing(&budget, "committed_tokens"), reported, "{budget}");
    assert_eq!(budget["limits"]["budget_tokens"], 1000);
    assert!(standing(&budget, "bucket_tokens") <= 5000, "{budget}");

    // Spend the rest one settled request at a time: each is admitted
    // exactly while committed spend plus its reservation fits.
    let big = chat(300);
    let estimate = body_len(&big) + 300;
    let mut spent = reported;
    let mut settled = 1;
    loop {
        let resp = post(&obleth, &big).await;
        let status = resp.status();
        if status != 200 {
            assert_eq!(status, 403);
            let refused: Value = resp.json().await.expect("an error body");
            assert_eq!(refused["error"]["code"], "budget_exhausted", "{refused}");
            break;
        }
        assert!(spent + estimate <= 1000, "admitted beyond the budget");
        let used: Value = resp.json().await.expect("a completion");
        spent += used["usage"]["total_tokens"].as_u64().expect("usage");
        settled += 1;
        let budget = until_settled(&obleth, settled, &[TENANT]).await.remove(0);
        assert_eq!(standing(&budget, "committed_tokens"), spent, "{budget}");
    }
    assert!(
        spent + estimate > 1000,
        "refused although {spent} + {estimate} fit"
    );
    let after = admin
        .ok("POST", "/tenants/acme/budget/reset", None, 200)
        .await;
    assert_eq!(standing(&after, "committed_tokens"), 0, "{after}");
    assert_eq!(post(&obleth, &big).await.status(), 200);
    let budget = until_settled(&obleth, settled + 1, &[TENANT])
        .await
        .remove(0);
    assert!(standing(&budget, "committed_tokens") > 0, "{budget}");
    let audit = admin
        .ok("GET", "/audit?entity_type=tenant", None, 200)
        .await;
    let reset = audit
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["action"] == "tenant.budget_reset")
        .unwrap_or_else(|| panic!("no reset audited: {audit}"));
    assert_eq!(
        reset["detail"]["committed_tokens_before"], spent,
        "the audit says what was reset: {reset}"
    );
}

#[tokio::test]
async fn a_timed_out_request_is_refunded() {
    let upstream = mock("vllm").await;
    let config = config(&upstream, ROOMY, None, true).replace(
        "    servers:",
        "    retries: 0\n    timeouts: { read: 300ms }\n    servers:",
    );
    let obleth = Obleth::start(&config).await;
    let timed_out = chat_request(&obleth, KEY)
        .header("x-mock-latency-ms", "2000")
        .json(&chat(50))
        .send()
        .await
        .expect("obleth answers");
    assert_eq!(timed_out.status(), 504);
    let budget = until_settled(&obleth, 1, &[TENANT]).await.remove(0);
    assert_eq!(
        standing(&budget, "committed_tokens"),
        0,
        "a timeout is refunded: {budget}"
    );
    assert_eq!(settled_as(&obleth, "refunded").await, 1.0);
}

/// Tokens the mock streams per second in the mid-stream test: slow enough
/// that obleth sees the client leave long before the next token is due.
const SLOW_TPS: u64 = 2;

#[tokio::test]
async fn a_client_leaving_mid_stream_pays_exactly_the_tokens_generated_before_it_left() {
    let upstream = mock("vllm").await;
    let obleth = start_local(&upstream, ROOMY).await;
    let pace_ms = 1000 / SLOW_TPS;
    // 200 tokens at 2/s: the client leaves after reading the first two.
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "go" }], "max_tokens": 200, "stream": true });
    let sent = Instant::now();
    let resp = chat_request(&obleth, KEY)
        .header("x-mock-tps", SLOW_TPS.to_string())
        .json(&body)
        .send()
        .await
        .expect("obleth answers");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let tokens = |text: &str| text.matches("\"content\":\"tok").count() as u64;
    while tokens(&text) < 2 {
        let chunk = stream
            .next()
            .await
            .expect("the stream goes on")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let seen = tokens(&text);
    drop(stream);
    // The mock numbers its tokens and paces every one, the first included,
    // so by any moment t it has generated at most (t - sent) / pace of
    // them, and none once obleth closed its connection. The client saw
    // `seen`, so obleth metered at least those.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "obleth kept the upstream stream open after its client left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let generated_at_most = sent.elapsed().as_millis() as u64 / pace_ms;
    let budget = until_settled(&obleth, 1, &[TENANT]).await.remove(0);
    assert_eq!(
        settled_as(&obleth, "estimated").await,
        1.0,
        "no usage arrived, so the streamed tokens were counted"
    );
    let output = tokens_metered(&obleth, "output").await as u64;
    assert!(
        (seen..=generated_at_most.max(seen)).contains(&output),
        "charged {output} output tokens; the client saw {seen} and the mock generated at most {generated_at_most}"
    );

    let input = tokens_metered(&obleth, "input").await as u64;
    assert_eq!(
        input,
        body_len(&body).div_ceil(4),
        "without usage the prompt is estimated at 4 bytes a token"
    );
    assert_eq!(
        standing(&budget, "committed_tokens"),
        input + output,
        "{budget}"
    );
}

#[tokio::test]
async fn a_client_leaving_before_the_first_byte_is_refunded() {
    let upstream = mock("vllm").await;
    let obleth = start_local(&upstream, ROOMY).await;
    let gave_up = chat_request(&obleth, KEY)
        .timeout(Duration::from_millis(200))
        .header("x-mock-latency-ms", "1000")
        .json(&chat(50))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let budget = until_settled(&obleth, 1, &[TENANT]).await.remove(0);
    assert_eq!(settled_as(&obleth, "refunded").await, 1.0);
    assert_eq!(standing(&budget, "committed_tokens"), 0, "{budget}");
    let line = obleth.access_lines(1).await.remove(0);
    let disconnected = line.contains(" 499 ");
    assert!(disconnected, "recorded as a client disconnect: {line}");
}

#[tokio::test]
async fn reservations_cover_every_choice_and_limits_must_be_integers() {
    let upstream = mock("vllm").await;
    let obleth = start_local(&upstream, "{ name: acme, tokens_per_minute: 1000 }").await;
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
