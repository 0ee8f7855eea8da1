//! Per-client rate limits (`routes[].rate_limit`): a client over its rate
//! gets 429 with `Retry-After` (plain on proxy routes, the OpenAI error on
//! LLM routes) while other clients are served, and a steady client is held
//! to the configured rate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEY_A: &str = "obk_rate_a_000000000000000000000000";
const KEY_B: &str = "obk_rate_b_000000000000000000000000";

fn config(upstream: &MockUpstream) -> String {
    format!(
        "pools:\n{}\
seed:
  tenants: [{{ name: acme }}]
  models: [{{ name: m, pool: p }}]
  keys: [{{ tenant: acme, name: a, secret: {KEY_A} }}, {{ tenant: acme, name: b, secret: {KEY_B} }}]
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    rate_limit: {{ by: key, requests_per_second: 2 }}
    llm: {{}}
  - name: burst
    match: {{ path: {{ prefix: /echo/burst }} }}
    rate_limit: {{ requests_per_second: 10, burst: 5 }}
    proxy: {{ pool: p }}
  - name: steady
    rate_limit: {{ requests_per_second: 10 }}
    proxy: {{ pool: p }}
",
        pool("p", &[upstream], "")
    )
}

#[tokio::test]
async fn a_client_over_rate_and_burst_gets_429_while_others_are_served() {
    let upstream = mock("a").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let noisy = client_from(2);
    let mut served = 0;
    let mut refused = Vec::new();
    for _ in 0..40 {
        let resp = noisy
            .get(obleth.url("/echo/burst"))
            .send()
            .await
            .expect("answer");
        match resp.status().as_u16() {
            200 => served += 1,
            429 => refused.push(resp),
            other => panic!("unexpected {other}"),
        }
    }
    // 10 a second plus a burst of 5; the sliding estimate may let one more
    // through when the window turns during the run.
    assert!((15..=17).contains(&served), "served {served}");
    let first = refused.remove(0);
    assert_eq!(header_text(&first, "retry-after"), "1");
    let body = first.text().await.expect("body");
    assert!(body.starts_with("429 too many requests"), "{body}");

    let quiet = client_from(3);
    let resp = quiet
        .get(obleth.url("/echo/burst"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200, "another client has a count of its own");
    assert_eq!(
        obleth
            .metric("obleth_rate_limited_total{route=\"burst\"}")
            .await,
        (40 - served) as f64
    );
}

#[tokio::test]
async fn a_steady_client_is_held_to_the_configured_rate() {
    let upstream = mock("a").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let client = client_from(4);
    let started = Instant::now();
    let (mut served, mut offered) = (0u32, 0u32);
    // Offered: 40 requests a second for 3 seconds, against a limit of 10.
    while started.elapsed() < Duration::from_secs(3) {
        let resp = client.get(obleth.url("/")).send().await.expect("answer");
        offered += 1;
        if resp.status() == 200 {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = f64::from(served) / elapsed;
    let offered = f64::from(offered) / elapsed;
    // Tolerance: ±20 % of the configured 10 requests a second (or of what
    // a slow machine managed to offer, if that was less).
    let expected = offered.min(10.0);
    assert!(
        (expected * 0.8..=expected * 1.2).contains(&rate),
        "{served} served: {rate:.1}/s of {offered:.1}/s offered"
    );
}

#[tokio::test]
async fn an_llm_route_limits_per_key_with_the_openai_error() {
    let upstream = mock("a").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let chat = two_token_chat("m");
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..3 {
            s.push(post_chat(&obleth, KEY_A, &chat).await.status().as_u16());
        }
        s
    };
    assert_eq!(statuses, [200, 200, 429]);
    let resp = post_chat(&obleth, KEY_A, &chat).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header_text(&resp, "retry-after"), "1");
    let error: Value = resp.json().await.expect("json");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(
        post_chat(&obleth, KEY_B, &chat).await.status(),
        200,
        "another key"
    );
}
