//! Load-balancing algorithms and health checks, observed through the real
//! binary by which mock server answered.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

async fn tally(
    obleth: &Obleth,
    n: usize,
    req: impl Fn(usize) -> reqwest::RequestBuilder,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = req(i).send().await.expect("response");
        assert_eq!(r.status(), 200, "request {i} through {}", obleth.http);
        *counts.entry(served_by(&r)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let (a, b) = (mock("a").await, mock("b").await);
    let config = format!(
        "pools:\n  - name: p\n    servers:\n      - {{ address: '{}', weight: 3 }}\n      - {{ address: '{}', weight: 1 }}\n{}",
        a.addr,
        b.addr,
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    let c = client();
    let counts = tally(&obleth, 80, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts["a"], 60, "{counts:?}");
    assert_eq!(counts["b"], 20, "{counts:?}");
}

#[tokio::test]
async fn random_spreads_over_all_servers() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "algorithm: random").await;
    let c = client();
    let counts = tally(&obleth, 200, |_| c.get(obleth.url("/bench"))).await;
    assert!(counts["a"] > 60 && counts["b"] > 60, "{counts:?}");
}

#[tokio::test]
async fn least_in_flight_avoids_the_busy_server() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "algorithm: least_in_flight").await;
    let c = client();
    // Hold one slow request on whichever server takes it first …
    let slow = {
        let c = c.clone();
        let url = obleth.url("/echo");
        tokio::spawn(async move { c.get(url).header("x-mock-latency-ms", "1500").send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = if a.requests() == 1 { "a" } else { "b" };
    // … then every quick request goes to the other one.
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(
        counts.get(busy),
        None,
        "busy server {busy} got quick requests: {counts:?}"
    );
    let slow = slow.await.expect("task").expect("slow response");
    assert_eq!(served_by(&slow), busy);
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_server() {
    let servers = [mock("a").await, mock("b").await, mock("c").await];
    let refs: Vec<&MockUpstream> = servers.iter().collect();
    for (hash_key, attach) in [("header:x-user", "header"), ("cookie:session", "cookie")] {
        let config = format!(
            "pools:\n{}{}",
            pool(
                "p",
                &refs,
                &format!("algorithm: consistent_hash\nhash_key: '{hash_key}'")
            ),
            catch_all("p")
        );
        let obleth = Obleth::start(&config).await;
        let c = client();
        let with_key = |i: usize| {
            let req = c.get(obleth.url("/bench"));
            let key = format!("user-{}", i % 10);
            if attach == "header" {
                req.header("x-user", key)
            } else {
                req.header("cookie", format!("theme=dark; session={key}"))
            }
        };
        let mut owner: HashMap<usize, String> = HashMap::new();
        for i in 0..60 {
            let r = with_key(i).send().await.unwrap();
            let server = served_by(&r);
            let first = owner.entry(i % 10).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "{hash_key}: key {} moved", i % 10);
        }
        let distinct: std::collections::HashSet<_> = owner.values().collect();
        assert!(
            distinct.len() >= 2,
            "{hash_key}: 10 keys all on one server: {owner:?}"
        );
    }
}

#[tokio::test]
async fn health_checks_eject_a_failing_server_and_bring_it_back() {
    let (a, b) = (mock("a").await, mock("b").await);
    let config = format!(
        "pools:\n{}{}",
        pool(
            "p",
            &[&a, &b],
            "health_check: { path: /health, interval: 100ms, timeout: 500ms, rise: 2, fall: 2 }"
        ),
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    let c = client();
    let healthy_b = format!(
        "obleth_upstream_server_healthy{{pool=\"p\",server=\"{}\"}}",
        b.addr
    );
    assert_eq!(obleth.metric(&healthy_b).await, 1.0);

    b.set_healthy(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while obleth.metric(&healthy_b).await != 0.0 {
        assert!(Instant::now() < deadline, "b never ejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts["a"], 20, "{counts:?}");

    b.set_healthy(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while obleth.metric(&healthy_b).await != 1.0 {
        assert!(Instant::now() < deadline, "b never rejoined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn tcp_health_check_ejects_a_stopped_server() {
    let (a, b) = (mock("a").await, mock("b").await);
    let config = format!(
        "pools:\n{}{}",
        pool(
            "p",
            &[&a, &b],
            "health_check: { kind: tcp, interval: 100ms, timeout: 300ms, rise: 1, fall: 1 }"
        ),
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    b.stop();
    let healthy_b = format!(
        "obleth_upstream_server_healthy{{pool=\"p\",server=\"{}\"}}",
        b.addr
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while obleth.metric(&healthy_b).await != 0.0 {
        assert!(Instant::now() < deadline, "b never ejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_connections_eject_the_server_passively() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "retries: 1").await;
    b.stop();
    let c = client();
    // The first request that picks b fails over to a and takes b out.
    let counts = tally(&obleth, 10, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts["a"], 10, "{counts:?}");
    assert_eq!(
        obleth
            .metric("obleth_upstream_attempts_total{outcome=\"connect_error\",pool=\"p\"}")
            .await,
        1.0
    );
}
