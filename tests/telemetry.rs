//! Usage telemetry through the real binary and a real ClickHouse (Debian's
//! 18.16, started per test): records arrive with the right fields; a
//! ClickHouse outage loses and duplicates nothing; obleth killed mid-load
//! and restarted leaves exactly one row per answered request; a torn record
//! is skipped and logged; the disk cap drops and counts instead of failing.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "obk_telemetry_tests_0000000000000";

fn config(upstream: &MockUpstream, telemetry: &str) -> String {
    format!(
        "pools:\n{}telemetry: {telemetry}\n\
         seed:\n  tenants: [{{ name: acme }}]\n  models: [{{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], "")
    )
}

fn shipping_to(ch: &ClickHouse) -> String {
    format!(
        "{{ replica: r1, clickhouse: {{ url: '{}', batch_interval: 100ms, timeout: 2s }} }}",
        ch.url()
    )
}

async fn chat(obleth: &Obleth, max_tokens: u64) -> reqwest::Response {
    client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "one two" }], "max_tokens": max_tokens }))
        .send()
        .await
        .expect("obleth answers")
}

/// Waits until `sql` answers `expected`.
async fn until_answer(ch: &ClickHouse, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ch.query(sql).await;
        if got.as_deref() == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn usage_records_arrive_in_clickhouse_with_the_right_fields() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream, &shipping_to(&ch))).await;
    let resp = chat(&obleth, 7).await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    until_answer(&ch, "SELECT count() FROM obleth.usage", "1").await;
    let row: Value = serde_json::from_str(
        &ch.query("SELECT * FROM obleth.usage FORMAT JSONEachRow")
            .await
            .unwrap(),
    )
    .unwrap();
    let admin = Admin::of(&obleth);
    let tenant = admin.ok("GET", "/tenants/acme", None, 200).await;
    assert_eq!(row["request_id"], request_id);
    assert_eq!(row["tenant"], tenant["id"]);
    assert_eq!(row["model"], "m");
    assert_eq!(row["route"], "llm");
    assert_eq!(row["admission"], "fast");
    assert_eq!(row["status"], 200);
    // JSON output quotes 64-bit integers.
    let n = |v: &Value| {
        v.as_str()
            .map_or(v.as_u64(), |s| s.parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(n(&row["input_tokens"]), n(&body["usage"]["prompt_tokens"]));
    assert_eq!(n(&row["output_tokens"]), 7);
    assert_eq!(row["estimated"], 0);
    assert_eq!(row["replica"], "r1");
    assert!(
        row["upstream"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{row}"
    );
    let cost = row["cost_usd"].as_f64().unwrap();
    let expected = body["usage"]["prompt_tokens"].as_f64().unwrap() * 1e-6 + 7.0 * 2e-6;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
    assert!(n(&row["total_ms"]) >= n(&row["ttfb_ms"]), "{row}");

    // A request refused after authentication is recorded too.
    let refused = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({ "model": "nope", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    until_answer(
        &ch,
        "SELECT status, admission, output_tokens FROM obleth.usage WHERE status = 404 FORMAT CSV",
        "404,\"rejected\",0",
    )
    .await;

    let usage = admin.ok("GET", "/usage?group_by=model", None, 200).await;
    let rows = usage["rows"].as_array().unwrap();
    let m = rows
        .iter()
        .find(|r| r["name"] == "m")
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(m["requests"], 1);
    assert_eq!(m["output_tokens"], 7);
    let log = admin
        .ok("GET", "/usage/requests?tenant=acme", None, 200)
        .await;
    assert_eq!(log.as_array().unwrap().len(), 2, "{log}");
    until_answer(&ch, "SELECT sum(requests) FROM obleth.usage_daily", "2").await;
}

#[tokio::test]
async fn a_clickhouse_outage_loses_and_duplicates_nothing() {
    let mut ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream, &shipping_to(&ch))).await;
    for _ in 0..20 {
        assert_eq!(chat(&obleth, 3).await.status(), 200);
    }
    until_answer(&ch, "SELECT count() FROM obleth.usage", "20").await;
    ch.stop();
    for _ in 0..30 {
        assert_eq!(
            chat(&obleth, 3).await.status(),
            200,
            "served while ClickHouse is down"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while obleth.metric("obleth_telemetry_backlog_bytes").await == 0.0 {
        assert!(Instant::now() < deadline, "the backlog never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ch.resume().await;
    until_answer(&ch, "SELECT count() FROM obleth.usage", "50").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ch.query("SELECT count(), uniqExact(request_id) FROM obleth.usage FORMAT CSV")
            .await
            .unwrap(),
        "50,50",
        "every record exactly once, without relying on merges"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while obleth.metric("obleth_telemetry_backlog_bytes").await > 0.0 {
        assert!(Instant::now() < deadline, "the backlog never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(obleth.stderr().contains("cannot ship usage records"));
}

#[tokio::test]
async fn obleth_killed_mid_load_and_restarted_leaves_one_row_per_answered_request() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    let wal_path = wal.path().display().to_string();
    let body = config(&upstream, &shipping_to(&ch));
    let obleth = Obleth::start_with(&body, "off", &[("OBLETH_WAL_PATH", &wal_path)]).await;
    let url = obleth.url("/v1/chat/completions");
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let url = url.clone();
        load.spawn(async move {
            let mut answered = Vec::new();
            loop {
                let sent = client()
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&json!({ "model": "m", "messages": [], "max_tokens": 2 }))
                    .send()
                    .await;
                let complete = match sent {
                    Ok(resp) => resp.status() == 200 && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !complete {
                    return answered;
                }
                // The response was complete, so its record was appended.
                answered.push(());
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    obleth.signal("KILL");
    let mut answered = 0;
    while let Some(done) = load.join_next().await {
        answered += done.unwrap().len();
    }
    assert!(answered >= 20, "load ran: {answered}");
    drop(obleth);

    let restarted = Obleth::start_with(&body, "off", &[("OBLETH_WAL_PATH", &wal_path)]).await;
    // Records of answered requests were durable at most a group commit
    // after their response; the row count settles at or above `answered`
    // (requests cut by the kill may have been logged too), with no
    // duplicates.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (rows, unique) = loop {
        let counts = ch
            .query("SELECT count(), uniqExact(request_id) FROM obleth.usage FORMAT CSV")
            .await
            .unwrap_or_default();
        let mut it = counts.split(',').map(|n| n.parse::<usize>().unwrap_or(0));
        let (rows, unique) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        if rows >= answered || Instant::now() > deadline {
            break (rows, unique);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        rows >= answered,
        "{rows} rows for {answered} answered requests"
    );
    assert_eq!(rows, unique, "no request has two rows");
    let statuses = ch
        .query("SELECT status, count() FROM obleth.usage GROUP BY status FORMAT JSONEachRow")
        .await
        .unwrap();
    let by_status: HashMap<String, u64> = statuses
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["status"].to_string(),
                v["count()"].as_str().unwrap_or("0").parse().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        by_status.get("200").copied().unwrap_or(0) as usize >= answered,
        "{by_status:?}"
    );
    drop(restarted);
}

#[tokio::test]
async fn a_torn_final_record_is_skipped_and_logged() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    let wal_path = wal.path().display().to_string();
    // First run without ClickHouse: records stay in the log.
    let offline = Obleth::start_with(
        &config(&upstream, "{}"),
        "off",
        &[("OBLETH_WAL_PATH", &wal_path)],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(chat(&offline, 2).await.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while offline.metric("obleth_telemetry_durable_total").await < 5.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    offline.signal("KILL");
    drop(offline);
    // A crash in the middle of a sixth record's write.
    let segment = std::fs::read_dir(wal.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']);
    std::fs::write(&segment, bytes).unwrap();

    let online = Obleth::start_with(
        &config(&upstream, &shipping_to(&ch)),
        "off",
        &[("OBLETH_WAL_PATH", &wal_path)],
    )
    .await;
    assert_eq!(chat(&online, 2).await.status(), 200);
    until_answer(&ch, "SELECT count() FROM obleth.usage", "6").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !online.stderr().contains("skipping a torn record") {
        assert!(Instant::now() < deadline, "{}", online.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_disk_cap_drops_and_counts_and_refusing_is_a_choice() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(
        &upstream,
        "{ segment_bytes: 4096, disk_cap_bytes: 4096 }",
    ))
    .await;
    for _ in 0..40 {
        assert_eq!(
            chat(&obleth, 2).await.status(),
            200,
            "served as on_full says"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while obleth
        .metric("obleth_telemetry_dropped{reason=\"disk_full\"}")
        .await
        == 0.0
    {
        assert!(Instant::now() < deadline, "drops are counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(obleth.metric("obleth_telemetry_disk_bytes").await <= 4096.0);
    let admin = Admin::of(&obleth);
    admin.ok("GET", "/capacity", None, 200).await;
    let (status, body) = admin.call("GET", "/usage", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("ClickHouse"), "{body}");

    let refusing = Obleth::start(&config(
        &upstream,
        // ClickHouse is down for good, so the log fills.
        "{ segment_bytes: 4096, disk_cap_bytes: 16384, on_full: refuse, clickhouse: { url: 'http://127.0.0.1:1' } }",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..80 {
        statuses.push(chat(&refusing, 2).await.status().as_u16());
    }
    let first_refusal = statuses.iter().position(|s| *s == 503);
    assert!(
        first_refusal.is_some_and(|at| at > 5 && statuses[..at].iter().all(|s| *s == 200)),
        "served until the log filled, then refused: {statuses:?}"
    );
    let refused = chat(&refusing, 2).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "usage_log_full");
}

#[tokio::test]
async fn committed_spend_lost_by_redis_is_restored_from_the_usage_ledger() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    // The store outlives the process, as in production.
    let store = TempDir::new();
    let body = config(&upstream, &shipping_to(&ch)).replace(
        "tenants: [{ name: acme }]",
        "tenants: [{ name: acme, budget_tokens: 100000 }]",
    ) + &format!(
        "redis: {{ url: 'redis://127.0.0.1:6379', prefix: '{prefix}' }}\n\
         store: {{ database_url: 'sqlite://{}/obleth.db' }}\n",
        store.path().display()
    );
    let obleth = Obleth::start(&body).await;
    for _ in 0..3 {
        assert_eq!(chat(&obleth, 40).await.status(), 200);
    }
    until_answer(&ch, "SELECT count() FROM obleth.usage", "3").await;
    let admin = Admin::of(&obleth);
    let before = admin.ok("GET", "/tenants/acme/budget", None, 200).await;
    let committed = before["standing"]["committed_tokens"].as_u64().unwrap();
    assert!(committed > 120, "{before}");
    drop(obleth);

    // Redis loses the spend (a flush, a restart without persistence).
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}budget:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    let restarted = Obleth::start(&body).await;
    let admin = Admin::of(&restarted);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = admin.ok("GET", "/tenants/acme/budget", None, 200).await;
        if now["standing"]["committed_tokens"] == committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restored: {now}, expected {committed}\n{}",
            restarted.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restarted
        .stderr()
        .contains("restored the committed spend of 1 budget scopes"));
}

#[tokio::test]
async fn migrate_creates_the_usage_schema_in_clickhouse() {
    let ch = ClickHouse::start().await;
    let dir = TempDir::new();
    let config = dir.path().join("obleth.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {{ database_url: 'sqlite://{}/obleth.db' }}\n\
             telemetry: {{ clickhouse: {{ url: '{}', database: usage_db }} }}\n",
            dir.path().display(),
            ch.url()
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_obleth"))
            .args(["migrate", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("usage schema created in ClickHouse database usage_db"),
            "{stdout}"
        );
    }
    assert_eq!(
        ch.query("SHOW TABLES FROM usage_db").await.unwrap(),
        ".inner.usage_daily\nusage\nusage_daily"
    );
}
