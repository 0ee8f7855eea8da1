//! Budgets admitted against leases (conf/README.md, "Leases"): two replicas
//! on one Redis never overspend; requests that fit a lease do not wait for
//! a slow Redis; a replica killed while holding a lease gives its slice
//! back after `budgets.lease_ttl`. (Redis down is in `redis_outage.rs`.)

mod budget_common;
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use budget_common::load::*;
use budget_common::{budget_config, chat, standing};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn redis_section(port: u16, prefix: &str, extra: &str) -> String {
    format!(
        "redis:\n  url: redis://127.0.0.1:{port}\n  prefix: '{prefix}'\nbudgets:\n  fail_open: false\n{extra}"
    )
}

async fn replica(upstream: &MockUpstream, db: &PgDatabase, tenant: &str, redis: &str) -> Obleth {
    let sections = format!("store:\n  database_url: '{}'\n{redis}", db.url);
    Obleth::start(&budget_config(upstream, tenant, KEY, &sections)).await
}

#[tokio::test]
async fn two_replicas_on_one_redis_never_overspend_a_shared_budget() {
    let (upstream, db, prefix) = shared_state().await;
    let redis = redis_section(6379, &prefix, "");
    let tenant = "{ name: acme, budget_tokens: 6000, tokens_per_minute: 100000 }";
    let a = replica(&upstream, &db, tenant, &redis).await;
    let b = replica(&upstream, &db, tenant, &redis).await;
    let tally = exhaust(&[&a, &b], 30).await;
    let committed = assert_exact(&a, &tally, 6000, "with two replicas on leases").await;
    let view = Admin::of(&b).ok("GET", TENANT, None, 200).await;
    assert_eq!(standing(&view, "committed_tokens"), committed, "{view}");
    // Most requests were admitted against a lease already held.
    let leased = a
        .metric("obleth_budget_admissions_total{path=\"lease\"}")
        .await;
    let renewed = a
        .metric("obleth_budget_admissions_total{path=\"renewal\"}")
        .await;
    eprintln!(
        "two replicas: {}, committed {committed} of 6000; replica a admitted {leased} against its lease, {renewed} after a renewal",
        tally.summary()
    );
    assert!(leased > renewed, "{leased} leased, {renewed} renewed");
}

/// A TCP relay in front of Redis that holds every answer back by the
/// delay set in it (milliseconds; 0 passes answers at once).
async fn slow_relay(redis_port: u16) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let delay = Arc::new(AtomicU64::new(0));
    let held = delay.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay = held.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let ms = delay.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, delay)
}

async fn chat_once(obleth: &Obleth) -> (u16, u64, Duration) {
    let started = Instant::now();
    let resp = post_chat(obleth, KEY, &chat(20)).await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let tokens = body["usage"]["total_tokens"].as_u64().unwrap_or(0);
    (status, tokens, started.elapsed())
}

#[tokio::test]
async fn requests_that_fit_their_lease_do_not_wait_for_a_slow_redis() {
    let (upstream, db, prefix) = shared_state().await;
    let (relay, delay) = slow_relay(6379).await;
    let obleth = replica(
        &upstream,
        &db,
        "{ name: acme, budget_tokens: 1000000, tokens_per_minute: 1000000 }",
        &redis_section(relay, &prefix, ""),
    )
    .await;
    let mut reported = 0;
    for _ in 0..10 {
        let (status, tokens, _) = chat_once(&obleth).await;
        assert_eq!(status, 200);
        reported += tokens;
    }
    // Redis now answers after 400 ms, half of the request path's deadline.
    delay.store(400, Ordering::Relaxed);
    let slow = Duration::from_millis(400);
    let mut latencies = Vec::new();
    for _ in 0..4 {
        let (status, tokens, took) = chat_once(&obleth).await;
        assert_eq!(status, 200);
        reported += tokens;
        latencies.push(took);
    }
    eprintln!("with Redis answering after {slow:?}: {latencies:?}");
    for took in &latencies {
        assert!(
            *took < slow / 2,
            "a request within its lease waited for Redis: {latencies:?}"
        );
    }
    // Settlements made meanwhile reach Redis exactly once.
    delay.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = Admin::of(&obleth).ok("GET", TENANT, None, 200).await;
        if standing(&view, "committed_tokens") == reported
            && standing(&view, "reserved_tokens") == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{view}, {reported} reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replica_killed_while_holding_a_lease_gives_its_slice_back_after_the_lease_ttl() {
    let (upstream, db, prefix) = shared_state().await;
    let redis = redis_section(6379, &prefix, "  lease_ttl: 2s\n");
    let tenant = "{ name: acme, budget_tokens: 2000 }";
    let a = replica(&upstream, &db, tenant, &redis).await;
    let b = replica(&upstream, &db, tenant, &redis).await;
    // `a` takes a lease with room to spare, and dies holding it.
    let mut reported = 0;
    for _ in 0..3 {
        let (status, tokens, _) = chat_once(&a).await;
        assert_eq!(status, 200);
        reported += tokens;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.signal("KILL");
    let killed = Instant::now();
    // `b` spends what is left: refused while `a`'s slice is held, served
    // again once it came back, never past the budget.
    let mut refused_while_held = false;
    let mut served_after_ttl = false;
    let deadline = killed + Duration::from_secs(20);
    loop {
        let (status, tokens, _) = chat_once(&b).await;
        match status {
            200 => {
                reported += tokens;
                if killed.elapsed() > Duration::from_secs(2) && refused_while_held {
                    served_after_ttl = true;
                }
            }
            403 => {
                if killed.elapsed() < Duration::from_secs(2) {
                    refused_while_held = true;
                } else if served_after_ttl || !refused_while_held {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("status {other}"),
        }
        assert!(Instant::now() < deadline, "the budget was never spent");
    }
    let view = Admin::of(&b).ok("GET", TENANT, None, 200).await;
    let committed = standing(&view, "committed_tokens");
    eprintln!(
        "killed replica: committed {committed} of 2000 ({reported} reported); refused while its lease was held: {refused_while_held}, served after the TTL: {served_after_ttl}"
    );
    assert_eq!(committed, reported, "{view}");
    assert!(committed <= 2000, "{view}");
    assert!(
        served_after_ttl || !refused_while_held,
        "the dead replica's slice never came back: {view}"
    );
    // What is left is less than one more request's worst case.
    let estimate = budget_common::body_len(&chat(20)) + 20;
    assert!(
        committed + estimate > 2000 - standing(&view, "reserved_tokens"),
        "budget left unused: {view}"
    );
}
