//! Load-balancing algorithms, connection limits and health checks (and the
//! health state a reload keeps), observed through the real binary by which
//! mock server answered.

mod common;
mod edge_kit;

use std::collections::HashMap;

use common::*;
use edge_kit::*;

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
    // Hold one slow request (long enough for the quick ones below even on
    // a loaded machine) on whichever server takes it first …
    let slow = {
        let c = c.clone();
        let url = obleth.url("/echo");
        tokio::spawn(async move { c.get(url).header("x-mock-latency-ms", "4000").send().await })
    };
    wait_until("the slow request to reach a server", || async {
        a.requests() + b.requests() == 1
    })
    .await;
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
    let healthy_b = healthy("p", b.addr);
    assert_eq!(obleth.metric(&healthy_b).await, 1.0);

    b.set_healthy(false);
    wait_sample(&obleth, &healthy_b, 0.0).await;
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts["a"], 20, "{counts:?}");

    b.set_healthy(true);
    wait_sample(&obleth, &healthy_b, 1.0).await;
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn a_tcp_check_only_connects_while_an_http_check_asks_for_the_status() {
    // Both `b`s answer /health with 503. A TCP check only connects, so it
    // keeps its `b` in rotation (and sends it no request at all); an HTTP
    // check takes its `b` out. Each pool has servers of its own, so the
    // connection and request counts belong to one kind of check.
    let (tcp_a, tcp_b) = (mock("tcp-a").await, mock("tcp-b").await);
    let (http_a, http_b) = (mock("http-a").await, mock("http-b").await);
    tcp_b.set_healthy(false);
    http_b.set_healthy(false);
    let check = "interval: 100ms, timeout: 500ms, rise: 1, fall: 1";
    let config = format!(
        "pools:\n{}{}routes:\n  - name: tcp\n    match: {{ path: {{ prefix: /tcp/ }} }}\n    proxy: {{ pool: tcp, rewrite_prefix: {{ from: /tcp/, to: / }} }}\n\
         \x20 - name: http\n    proxy: {{ pool: http }}\n",
        pool(
            "tcp",
            &[&tcp_a, &tcp_b],
            &format!("health_check: {{ kind: tcp, {check} }}")
        ),
        pool(
            "http",
            &[&http_a, &http_b],
            &format!("health_check: {{ path: /health, {check} }}")
        ),
    );
    let obleth = Obleth::start(&config).await;
    wait_sample(&obleth, &healthy("http", http_b.addr), 0.0).await;
    assert!(http_b.requests() >= 1, "the HTTP check sent GET /health");
    // Three TCP rounds after the start, any of which would have taken tcp-b
    // out (fall: 1) had it looked at /health.
    let seen = tcp_b.connections();
    wait_until("three more TCP check rounds", || async {
        tcp_b.connections() >= seen + 3
    })
    .await;
    assert_eq!(tcp_b.requests(), 0, "a TCP check sends no HTTP request");
    assert_eq!(obleth.metric(&healthy("tcp", tcp_b.addr)).await, 1.0);
    let c = client();
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/tcp/bench"))).await;
    assert_eq!(counts.get("tcp-b"), Some(&10), "{counts:?}");
    let counts = tally(&obleth, 20, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts.get("http-a"), Some(&20), "{counts:?}");

    // A TCP check does fail when nothing accepts the connection.
    tcp_b.stop();
    wait_sample(&obleth, &healthy("tcp", tcp_b.addr), 0.0).await;
    let counts = tally(&obleth, 10, |_| c.get(obleth.url("/tcp/bench"))).await;
    assert_eq!(counts.get("tcp-a"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn refused_connections_eject_the_server_passively() {
    let a = mock("a").await;
    let refusing = Refusing::new();
    let servers = [a.addr.to_string(), refusing.addr.to_string()];
    let obleth = Obleth::start(&pool_of(&servers, "retries: 1")).await;
    let c = client();
    // The first request that picks the refusing server fails over to a and
    // takes it out.
    let counts = tally(&obleth, 10, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts["a"], 10, "{counts:?}");
    assert_eq!(
        obleth
            .metric("obleth_upstream_attempts_total{outcome=\"connect_error\",pool=\"p\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_server_at_max_connections_is_skipped_and_with_none_left_503() {
    let (a, b, solo) = (mock("a").await, mock("b").await, mock("solo").await);
    let config = format!(
        "pools:\n  - name: p\n    retries: 0\n    servers:\n      - {{ address: '{}', max_connections: 1 }}\n      - {{ address: '{}' }}\n\
         \x20 - name: solo\n    retries: 0\n    servers: [{{ address: '{}', max_connections: 1 }}]\n\
         routes:\n  - name: solo\n    match: {{ path: {{ prefix: /solo/ }} }}\n    proxy: {{ pool: solo, rewrite_prefix: {{ from: /solo/, to: / }} }}\n\
         \x20 - name: all\n    proxy: {{ pool: p }}\n",
        a.addr, b.addr, solo.addr
    );
    let obleth = Obleth::start(&config).await;
    let c = client();
    // One slow request on each limited server (round robin starts at a).
    let hold = |path: &str| {
        let req = c
            .get(obleth.url(path))
            .header("x-mock-latency-ms", "5000")
            .send();
        tokio::spawn(req)
    };
    let held_a = hold("/echo");
    let held_solo = hold("/solo/echo");
    wait_until("both slow requests to arrive", || async {
        a.requests() >= 1 && solo.requests() >= 1
    })
    .await;
    assert_eq!(
        (a.requests(), b.requests(), solo.requests()),
        (1, 0, 1),
        "one request each on a and solo"
    );

    // a is at its limit: everything goes to b, not every other request.
    let counts = tally(&obleth, 10, |_| c.get(obleth.url("/bench"))).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    // The only server is at its limit: 503 at once, nothing queued.
    let r = c.get(obleth.url("/solo/bench")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(solo.requests(), 1, "nothing reached the full server");

    let slow = held_a.await.unwrap().unwrap();
    assert_eq!(served_by(&slow), "a");
    let slow = held_solo.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    // The slot is freed once obleth finished the request, just after the
    // client has its answer; then the server takes requests again.
    wait_until("the freed slot to take a request", || async {
        let r = c.get(obleth.url("/solo/bench")).send().await.unwrap();
        r.status() == 200 && served_by(&r) == "solo"
    })
    .await;
}

#[tokio::test]
async fn sighup_keeps_health_and_ejection_state_of_unchanged_servers() {
    let (a, b, c_new) = (mock("a").await, mock("b").await, mock("c").await);
    let (d, e_new) = (mock("d").await, mock("e").await);
    let refusing = Refusing::new();
    // Pool `checked`: b fails its HTTP check. Pool `passive`: the refusing
    // server is ejected for its 10 s cool-down by a failed connection.
    let config = |reloaded: bool| {
        let (extra_checked, extra_passive, check) = if reloaded {
            // After the reload one check round comes at once, then none for
            // an hour, and one failure is not enough (fall: 3): b stays out
            // only if its state survived the reload.
            (
                format!("      - address: '{}'\n", c_new.addr),
                format!("      - address: '{}'\n", e_new.addr),
                "{ path: /health, interval: 1h, rise: 1, fall: 3 }",
            )
        } else {
            (
                String::new(),
                String::new(),
                "{ path: /health, interval: 100ms, rise: 1, fall: 1 }",
            )
        };
        format!(
            "pools:\n  - name: checked\n    health_check: {check}\n    servers:\n      - address: '{}'\n      - address: '{}'\n{extra_checked}\
             \x20 - name: passive\n    retries: 1\n    servers:\n      - address: '{}'\n      - address: '{}'\n{extra_passive}\
             routes:\n  - name: passive\n    match: {{ path: {{ prefix: /passive/ }} }}\n    proxy: {{ pool: passive, rewrite_prefix: {{ from: /passive/, to: / }} }}\n\
             \x20 - name: checked\n    proxy: {{ pool: checked }}\n",
            a.addr, b.addr, d.addr, refusing.addr
        )
    };
    let connect_errors =
        "obleth_upstream_attempts_total{outcome=\"connect_error\",pool=\"passive\"}";
    let obleth = Obleth::start(&config(false)).await;
    let client = client();
    b.set_healthy(false);
    wait_sample(&obleth, &healthy("checked", b.addr), 0.0).await;
    let counts = tally(&obleth, 2, |_| client.get(obleth.url("/passive/bench"))).await;
    assert_eq!(counts.get("d"), Some(&2), "{counts:?}");
    assert_eq!(obleth.metric(connect_errors).await, 1.0);

    obleth.reload(&config(true));
    wait_reloaded(&obleth, 1.0).await;
    let counts = tally(&obleth, 20, |_| client.get(obleth.url("/bench"))).await;
    // (Round robin hands a skipped server's turns to the next one.)
    assert!(
        !counts.contains_key("b") && counts.get("c").is_some_and(|&n| n >= 6),
        "the new server serves, the failing one stays out: {counts:?}"
    );
    assert_eq!(obleth.metric(&healthy("checked", b.addr)).await, 0.0);
    let counts = tally(&obleth, 20, |_| client.get(obleth.url("/passive/bench"))).await;
    assert!(counts.get("e").is_some_and(|&n| n >= 6), "{counts:?}");
    assert_eq!(
        obleth.metric(connect_errors).await,
        1.0,
        "the ejected server was not tried again after the reload"
    );
}
