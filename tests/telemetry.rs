//! Usage telemetry through the real binary and a real ClickHouse (Debian's
//! 18.16, started per test): records arrive with the right fields; a
//! ClickHouse outage loses and duplicates nothing; obleth killed mid-load
//! and restarted leaves exactly one row per answered request; a torn record
//! is skipped and logged; the disk cap drops and counts instead of failing.

mod budget_common;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use budget_common::{standing, until_settled, OwnRedis};
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

/// How long the shipping tests wait for a metric to move.
const SHIPPING: Duration = Duration::from_secs(30);
const SHIPPED: &str = "obleth_telemetry_shipped_total";
const BACKLOG: &str = "obleth_telemetry_backlog_bytes";

async fn chat(obleth: &Obleth, max_tokens: u64) -> reqwest::Response {
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "one two" }], "max_tokens": max_tokens });
    post_chat(obleth, KEY, &body).await
}

/// Starts obleth on `body`, without an access log, with its usage log in
/// `wal`, which outlives the process.
async fn start_logging_to(body: &str, wal: &TempDir) -> Obleth {
    let wal_path = wal.path().display().to_string();
    Obleth::start_with(body, "off", &[("OBLETH_WAL_PATH", &wal_path)]).await
}

/// Stops background merges of the usage table, so a duplicate row stays
/// visible to `count()` instead of being collapsed by ReplacingMergeTree.
/// Waits for obleth to have created the table; must be repeated after a
/// ClickHouse restart.
async fn stop_merges(ch: &ClickHouse) {
    ch.until_answer("EXISTS TABLE obleth.usage", "1").await;
    let stopped = ch.query("SYSTEM STOP MERGES obleth.usage").await;
    assert!(stopped.is_ok(), "SYSTEM STOP MERGES: {stopped:?}");
}

/// What the usage ledger holds, counted so that merges cannot hide a
/// duplicate: rows, distinct record ids, distinct request ids, and the
/// daily rollup's request total (the materialized view adds every inserted
/// row for good; merging either table never lowers it).
#[derive(Debug, PartialEq)]
struct Ledger {
    rows: u64,
    records: u64,
    requests: u64,
    rollup: u64,
}

async fn ledger(ch: &ClickHouse) -> Ledger {
    let counts = ch
        .query("SELECT count(), uniqExact(record_id), uniqExact(request_id) FROM obleth.usage FORMAT CSV")
        .await
        .unwrap_or_else(|e| panic!("count the usage table: {e}"));
    let rollup = ch
        .query("SELECT sum(requests) FROM obleth.usage_daily")
        .await
        .unwrap_or_else(|e| panic!("sum the daily rollup: {e}"));
    let n = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("a count, not {s:?}"))
    };
    let counts: Vec<u64> = counts.split(',').map(n).collect();
    Ledger {
        rows: counts[0],
        records: counts[1],
        requests: counts[2],
        rollup: n(&rollup),
    }
}

/// Sends one request to a (re)started obleth and waits until its row is in
/// ClickHouse and the backlog is empty: the log ships in order, so by then
/// everything logged before it (and the crashed rows of earlier runs) is in.
async fn ship_everything(obleth: &Obleth, ch: &ClickHouse) {
    let last = chat(obleth, 2).await;
    assert_eq!(last.status(), 200);
    let last_id = last.headers()["x-request-id"]
        .to_str()
        .expect("a request id")
        .to_string();
    ch.until_answer(
        &format!("SELECT count() > 0 FROM obleth.usage WHERE request_id = '{last_id}'"),
        "1",
    )
    .await;
    obleth.wait_metric(BACKLOG, |b| b == 0.0, SHIPPING).await;
}

/// Asserts every one of `expected` records is in the ledger exactly once.
async fn assert_exactly_once(ch: &ClickHouse, expected: u64, when: &str) {
    let held = ledger(ch).await;
    assert_eq!(
        held,
        Ledger {
            rows: expected,
            records: expected,
            requests: expected,
            rollup: expected,
        },
        "{when}: every record exactly once (rows, record ids, request ids, daily rollup)"
    );
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
    ch.until_answer("SELECT count() FROM obleth.usage", "1")
        .await;
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
    ch.until_answer(
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
    ch.until_answer("SELECT sum(requests) FROM obleth.usage_daily", "2")
        .await;
}

#[tokio::test]
async fn a_clickhouse_outage_loses_and_duplicates_nothing() {
    let mut ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&config(&upstream, &shipping_to(&ch))).await;
    stop_merges(&ch).await;
    for _ in 0..20 {
        assert_eq!(chat(&obleth, 3).await.status(), 200);
    }
    // The shipper counts a batch only after its inserts returned, so once
    // it counts 20 nothing of theirs is still on the way.
    obleth.wait_at_least(SHIPPED, 20.0, SHIPPING).await;
    assert_exactly_once(&ch, 20, "before the outage").await;
    ch.stop();
    for _ in 0..30 {
        assert_eq!(
            chat(&obleth, 3).await.status(),
            200,
            "served while ClickHouse is down"
        );
    }
    obleth.wait_metric(BACKLOG, |b| b > 0.0, SHIPPING).await;
    // The shipper has tried and failed against the dead server.
    obleth
        .wait_stderr("cannot ship usage records", Duration::from_secs(30))
        .await;
    ch.resume().await;
    stop_merges(&ch).await;
    obleth.wait_at_least(SHIPPED, 50.0, SHIPPING).await;
    obleth.wait_metric(BACKLOG, |b| b == 0.0, SHIPPING).await;
    assert_exactly_once(&ch, 50, "after the outage").await;
    assert_eq!(
        obleth.metric(SHIPPED).await,
        50.0,
        "each record shipped once"
    );
}

#[tokio::test]
async fn obleth_killed_mid_load_and_restarted_leaves_one_row_per_answered_request() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    let body = config(&upstream, &shipping_to(&ch));
    let obleth = start_logging_to(&body, &wal).await;
    stop_merges(&ch).await;
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
    // Kill it while records are being written and shipped: some batches
    // are in ClickHouse, more are only in the log.
    obleth.wait_at_least(SHIPPED, 20.0, SHIPPING).await;
    obleth
        .wait_at_least("obleth_telemetry_durable_total", 60.0, SHIPPING)
        .await;
    obleth.signal("KILL");
    let mut answered = 0;
    while let Some(done) = load.join_next().await {
        answered += done.expect("a load task").len() as u64;
    }
    assert!(answered >= 20, "load ran: {answered}");
    drop(obleth);

    let restarted = start_logging_to(&body, &wal).await;
    ship_everything(&restarted, &ch).await;
    // Records of answered requests were durable at most a group commit
    // after their response; requests cut by the kill may have been logged
    // too, so there may be more rows than answers, but no duplicates.
    let held = ledger(&ch).await;
    assert!(
        held.rows > answered,
        "{held:?} for {answered} answered requests and one after the restart"
    );
    assert_eq!(held.records, held.rows, "no record has two rows: {held:?}");
    assert_eq!(
        held.requests, held.rows,
        "no request has two rows: {held:?}"
    );
    assert_eq!(
        held.rollup, held.rows,
        "the daily rollup counts each request once: {held:?}"
    );
    let statuses = ch
        .query("SELECT status, count() FROM obleth.usage GROUP BY status FORMAT JSONEachRow")
        .await
        .expect("statuses");
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
    let served = by_status.get("200").copied().unwrap_or(0);
    let crashed = by_status.get("0").copied().unwrap_or(0);
    assert_eq!(
        served + crashed,
        held.rows,
        "every row is a completed request or a crashed intent: {by_status:?}"
    );
    // A request answered just before the kill may have only its intent on
    // disk (its completion is logged after the response): it ships as a
    // crashed row, never as none.
    assert!(served + crashed > answered, "{by_status:?} for {answered}");
}

#[tokio::test]
async fn a_torn_final_record_is_skipped_and_logged() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    // First run without ClickHouse: records stay in the log.
    let offline = start_logging_to(&config(&upstream, "{}"), &wal).await;
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

    let online = start_logging_to(&config(&upstream, &shipping_to(&ch)), &wal).await;
    assert_eq!(chat(&online, 2).await.status(), 200);
    ch.until_answer("SELECT count() FROM obleth.usage", "6")
        .await;
    online
        .wait_stderr("skipping a torn record", Duration::from_secs(5))
        .await;
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
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "usage_log_full");
}

/// The test configuration with a 100,000-token budget for `acme`, plus
/// `extra` sections.
fn budgeted(upstream: &MockUpstream, ch: &ClickHouse, extra: &str) -> String {
    config(upstream, &shipping_to(ch)).replace(
        "tenants: [{ name: acme }]",
        "tenants: [{ name: acme, budget_tokens: 100000 }]",
    ) + extra
}

/// Three charged requests, shipped and settled: their committed spend.
async fn spend_three(obleth: &Obleth, ch: &ClickHouse) -> u64 {
    for _ in 0..3 {
        assert_eq!(chat(obleth, 40).await.status(), 200);
    }
    ch.until_answer("SELECT count() FROM obleth.usage", "3")
        .await;
    let before = until_settled(obleth, 3, &["/tenants/acme/budget"])
        .await
        .remove(0);
    let committed = standing(&before, "committed_tokens");
    assert!(committed > 120, "{before}");
    committed
}

/// Waits (`limit` at most) until `acme`'s committed spend, as `obleth`
/// reads it, is at least `committed`.
async fn until_restored(obleth: &Obleth, committed: u64, limit: Duration) {
    let admin = Admin::of(obleth);
    let deadline = Instant::now() + limit;
    loop {
        // 503 while the budget store is still known down.
        let now = admin.call("GET", "/tenants/acme/budget", None).await;
        if now.1["standing"]["committed_tokens"].as_u64() >= Some(committed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not restored: {now:?}, expected {committed}\n{}",
            obleth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn committed_spend_lost_by_redis_is_restored_from_the_usage_ledger() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    // The store outlives the process, as in production.
    let store = TempDir::new();
    let body = budgeted(
        &upstream,
        &ch,
        &format!(
            "redis: {{ url: 'redis://127.0.0.1:6379', prefix: '{prefix}' }}\n\
             store: {{ database_url: 'sqlite://{}/obleth.db' }}\n",
            store.path().display()
        ),
    );
    let obleth = Obleth::start(&body).await;
    let committed = spend_three(&obleth, &ch).await;
    drop(obleth);

    // Redis loses the spend (a flush, a restart without persistence).
    assert!(forget_budgets(&prefix).await > 0);

    let restarted = Obleth::start(&body).await;
    until_restored(&restarted, committed, Duration::from_secs(15)).await;
    let now = Admin::of(&restarted)
        .ok("GET", "/tenants/acme/budget", None, 200)
        .await;
    assert_eq!(
        now["standing"]["committed_tokens"], committed,
        "exactly, no more"
    );
    assert!(restarted
        .stderr()
        .contains("restored the committed spend of 1 budget scopes"));
}

#[tokio::test]
async fn a_redis_restarted_empty_under_a_running_obleth_gets_the_spend_back_at_once() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let mut redis = OwnRedis::start().await;
    let redis_url = format!("redis: {{ url: 'redis://127.0.0.1:{}' }}\n", redis.port);
    let obleth = Obleth::start(&budgeted(&upstream, &ch, &redis_url)).await;
    let committed = spend_three(&obleth, &ch).await;

    // Redis dies and comes back empty while obleth runs: the spend is back
    // as soon as obleth sees it (not at the next periodic check, minutes
    // later, while the tenant could spend its budget again).
    redis.kill();
    // A request notices (fail-open serves it), and the breaker opens.
    assert_eq!(chat(&obleth, 1).await.status(), 200);
    obleth
        .wait_stderr("budget store down", Duration::from_secs(10))
        .await;
    let _redis = OwnRedis::start_on(redis.port).await;
    // The request served meanwhile is settled on top when replayed.
    until_restored(&obleth, committed, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn spend_two_replicas_had_not_shipped_when_redis_came_back_is_restored_too() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let mut redis = OwnRedis::start().await;
    // Batches wait 3 s: when Redis comes back, each replica's last
    // requests are still only in its own log, and each replica's own
    // check sees only its own.
    let config = format!(
        "pools:\n{}store: {{ database_url: '{}' }}\n\
         redis: {{ url: 'redis://127.0.0.1:{}' }}\n\
         telemetry: {{ clickhouse: {{ url: '{}', batch_interval: 3s }} }}\n\
         seed:\n  tenants: [{{ name: acme, budget_tokens: 100000 }}]\n  models: [{{ name: m, pool: p }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    llm: {{}}\n",
        pool("p", &[&upstream], ""),
        db.url,
        redis.port,
        ch.url()
    );
    let a = Obleth::start_with(&config, "off", &[("OBLETH_REPLICA", "a")]).await;
    let b = Obleth::start_with(&config, "off", &[("OBLETH_REPLICA", "b")]).await;
    for obleth in [&a, &b, &a, &b] {
        assert_eq!(chat(obleth, 40).await.status(), 200);
    }
    until_settled(&b, 2, &[]).await;
    let view = until_settled(&a, 2, &["/tenants/acme/budget"]).await;
    let committed = standing(&view[0], "committed_tokens");
    redis.kill();
    for obleth in [&a, &b] {
        assert_eq!(chat(obleth, 1).await.status(), 200, "fail-open serves");
        obleth
            .wait_stderr("budget store down", Duration::from_secs(10))
            .await;
    }
    let _redis = OwnRedis::start_on(redis.port).await;
    // The replicas check again once the batches that were waiting shipped.
    until_restored(&a, committed, Duration::from_secs(25)).await;
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

#[tokio::test]
async fn against_a_fresh_clickhouse_the_ledger_check_waits_for_the_schema() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let body = config(&upstream, &shipping_to(&ch)).replace(
        "tenants: [{ name: acme }]",
        "tenants: [{ name: acme, budget_tokens: 100000 }]",
    );
    let obleth = Obleth::start(&body).await;
    ch.until_answer("EXISTS TABLE obleth.usage", "1").await;
    assert_eq!(chat(&obleth, 5).await.status(), 200);
    ch.until_answer("SELECT count() FROM obleth.usage", "1")
        .await;
    let stderr = obleth.stderr();
    assert!(
        !stderr.contains("cannot check budgets against the usage ledger"),
        "the check ran before the schema existed:\n{stderr}"
    );
}

/// One client of the kill test: streamed requests with ids of its own until
/// obleth dies; the ids of the responses that arrived whole.
async fn stream_until_killed(url: String, prefix: String) -> Vec<String> {
    let mut completed = Vec::new();
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        let body = json!({ "model": "m", "messages": [], "max_tokens": 4, "stream": true });
        let sent = client()
            .post(&url)
            .bearer_auth(KEY)
            .header("x-request-id", &id)
            .header("x-mock-tps", "400")
            .json(&body)
            .send()
            .await;
        let Ok(resp) = sent else { break };
        let whole = resp.status() == 200
            && resp
                .text()
                .await
                .is_ok_and(|text| text.ends_with("data: [DONE]\n\n"));
        if !whole {
            break;
        }
        completed.push(id);
    }
    completed
}

#[tokio::test]
async fn every_request_the_client_saw_complete_has_one_row_whenever_obleth_is_killed() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    let body = config(&upstream, &shipping_to(&ch));
    let mut completed = Vec::new();
    // Kills at instants spread over the request cycle, each one right after
    // a response ended at the client (where a record written only after
    // the response would not be on disk yet), with others in flight.
    for (run, after_ms) in [110u64, 177, 252, 329, 401, 483, 548, 629, 702, 771]
        .into_iter()
        .enumerate()
    {
        let obleth = start_logging_to(&body, &wal).await;
        // Warm (key and catalog cached), so the clients run at full pace.
        assert_eq!(chat(&obleth, 1).await.status(), 200);
        let url = obleth.url("/v1/chat/completions");
        let clients: Vec<_> = (0..3)
            .map(|c| tokio::spawn(stream_until_killed(url.clone(), format!("r{run}c{c}"))))
            .collect();
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let trigger = format!("r{run}-last");
        let resp = client()
            .post(&url)
            .bearer_auth(KEY)
            .header("x-request-id", &trigger)
            .json(&json!({ "model": "m", "messages": [], "max_tokens": 3, "stream": true }))
            .send()
            .await
            .expect("answered");
        let text = resp.text().await.expect("the stream");
        // At once: spawning `kill` would give the log milliseconds more.
        let pid = i32::try_from(obleth.pid()).expect("a pid");
        // SAFETY: kill(2) on the child this test started; no memory involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        completed.push(trigger);
        for c in clients {
            completed.extend(c.await.expect("a client"));
        }
        drop(obleth);
    }
    assert!(completed.len() >= 10, "load ran: {}", completed.len());

    // A last run ships everything: the crashed intents of the runs before,
    // then its own request, in that order.
    let last = start_logging_to(&body, &wal).await;
    ship_everything(&last, &ch).await;
    let rows = ch
        .query("SELECT request_id, outcome FROM obleth.usage FORMAT TSV")
        .await
        .expect("rows");
    let mut by_request: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in rows.lines() {
        if let Some((id, outcome)) = line.split_once('\t') {
            by_request.entry(id).or_default().push(outcome);
        }
    }
    let mut problems = Vec::new();
    for id in &completed {
        match by_request.get(id.as_str()).map(Vec::len) {
            Some(1) => {}
            n => problems.push(format!("{id}: {} rows", n.unwrap_or(0))),
        }
    }
    let twice: Vec<_> = by_request.iter().filter(|(_, r)| r.len() > 1).collect();
    let crashed = by_request
        .values()
        .flatten()
        .filter(|o| **o == "crashed")
        .count();
    assert!(
        problems.is_empty() && twice.is_empty(),
        "{} of {} completed requests without exactly one row: {problems:?}; rows twice: {twice:?}",
        problems.len(),
        completed.len()
    );
    eprintln!(
        "{} completed requests through 10 kills: each has one row; {crashed} crashed rows for requests cut off",
        completed.len()
    );
}

#[tokio::test]
async fn a_request_killed_mid_response_leaves_one_crashed_row_at_its_reservation() {
    let ch = ClickHouse::start().await;
    let upstream = mock("vllm").await;
    let wal = TempDir::new();
    let body = config(&upstream, &shipping_to(&ch));
    let obleth = start_logging_to(&body, &wal).await;
    // The response head arrives at once, its body over seconds: obleth is
    // killed while the client reads it.
    let resp = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "cut-off")
        .header("x-mock-fault", "slow-body-ms:2000")
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "one two" }], "max_tokens": 9 }))
        .send()
        .await
        .expect("the response head");
    assert_eq!(resp.status(), 200);
    obleth.signal("KILL");
    assert!(resp.bytes().await.is_err(), "the body was cut off");
    drop(obleth);

    let restarted = start_logging_to(&body, &wal).await;
    ch.until_answer(
        "SELECT count() FROM obleth.usage WHERE request_id = 'cut-off'",
        "1",
    )
    .await;
    let row = ch
        .query(
            "SELECT outcome, status, input_tokens, output_tokens, estimated \
             FROM obleth.usage WHERE request_id = 'cut-off' FORMAT TSV",
        )
        .await
        .expect("the row");
    // The reservation: the body's bytes bound the prompt, max_tokens the
    // completion.
    let request_bytes = serde_json::to_vec(
        &json!({ "model": "m", "messages": [{ "role": "user", "content": "one two" }], "max_tokens": 9 }),
    )
    .expect("JSON")
    .len();
    assert_eq!(row, format!("crashed\t0\t{request_bytes}\t9\t1"));
    // Restarted again, it is not shipped a second time.
    drop(restarted);
    let again = start_logging_to(&body, &wal).await;
    assert_eq!(chat(&again, 1).await.status(), 200);
    again.wait_metric(BACKLOG, |b| b == 0.0, SHIPPING).await;
    ch.until_answer(
        "SELECT count() FROM obleth.usage WHERE request_id = 'cut-off'",
        "1",
    )
    .await;
}
