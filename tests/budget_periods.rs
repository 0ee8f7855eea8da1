//! Budget periods and where spend comes back from, through the real binary:
//! a monthly budget starts again with the tenant's own month (Redis state
//! of the previous month seeded as it would be found), the usage ledger in
//! ClickHouse restores lost spend from the start of the tenant's month in
//! its timezone and not from before an audited reset, with the store on
//! Postgres, and seeding Postgres is idempotent across restarts.

mod budget_common;
mod common;

use std::time::Duration;

use budget_common::*;
use common::*;
use serde_json::{json, Value};
use sqlx::Row;

/// Tenants on either side of the date line: Kiritimati is UTC+14, Pago
/// Pago UTC-11, so their months begin 25 hours apart and neither begins
/// when UTC's does.
const EAST: (&str, &str) = ("east", "Pacific/Kiritimati");
const WEST: (&str, &str) = ("west", "Pacific/Pago_Pago");

fn secret(tenant: &str) -> String {
    format!("obk_budget_periods_{tenant:0<12}")
}

async fn post(obleth: &Obleth, tenant: &str) -> reqwest::Response {
    post_chat(obleth, &secret(tenant), &chat(20)).await
}

/// The month `tz` is in now (`2026-11`), the one before, and when the
/// current one began (Unix ms), computed here from the calendar.
fn months(tz: &str) -> (String, String, i64) {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or_else(|e| panic!("{tz}: {e}"));
    let now = jiff::Timestamp::now().to_zoned(zone.clone());
    let (year, month) = (now.year(), now.month());
    let start = jiff::civil::date(year, month, 1)
        .at(0, 0, 0, 0)
        .to_zoned(zone)
        .expect("the first of the month exists");
    let (py, pm) = if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    };
    (
        format!("{year:04}-{month:02}"),
        format!("{py:04}-{pm:02}"),
        start.timestamp().as_millisecond(),
    )
}

/// `seed:` with monthly-budget tenants (`name`, `timezone`, extra YAML),
/// model `m` and one key per tenant.
fn seed(tenants: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("seed:\n  tenants:\n");
    for (name, tz, extra) in tenants {
        text.push_str(&format!(
            "    - {{ name: {name}, timezone: {tz}, budget_period: monthly{extra} }}\n"
        ));
    }
    text.push_str("  models: [{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }]\n  keys:\n");
    for (name, _, _) in tenants {
        text.push_str(&format!(
            "    - {{ tenant: {name}, name: k, secret: {} }}\n",
            secret(name)
        ));
    }
    text
}

const ROUTES: &str = "routes:\n  - name: llm\n    match: { path: { prefix: /v1/ } }\n    llm: {}\n";

/// The store on `db`, budgets in Redis under `prefix`, usage shipped to
/// `ch`, and `tenants` seeded: what the ledger restore tests run on.
fn ledger_config(
    upstream: &MockUpstream,
    db: &PgDatabase,
    prefix: &str,
    ch: &ClickHouse,
    tenants: &[(&str, &str, &str)],
) -> String {
    format!(
        "pools:\n{}store:\n  database_url: '{}'\nredis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n\
         telemetry: {{ replica: r1, clickhouse: {{ url: '{}', batch_interval: 100ms, timeout: 2s }} }}\n{}{ROUTES}",
        pool("p", &[upstream], ""),
        db.url,
        ch.url(),
        seed(tenants)
    )
}

/// Starts obleth on `config` and waits for it to create the usage ledger's
/// schema in `ch`.
async fn start_with_ledger(config: &str, ch: &ClickHouse) -> Obleth {
    let obleth = Obleth::start(config).await;
    ch.until_answer("EXISTS TABLE obleth.usage", "1").await;
    obleth
}

async fn tenant_id(admin: &Admin, name: &str) -> String {
    let tenant = admin
        .ok("GET", &format!("/tenants/{name}"), None, 200)
        .await;
    tenant["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{tenant}"))
        .to_string()
}

#[tokio::test]
async fn a_monthly_budget_starts_again_when_the_tenants_own_month_does() {
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let obleth = Obleth::start(&format!(
        "pools:\n{}redis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n{}{ROUTES}",
        pool("p", &[&upstream], ""),
        seed(&[
            (EAST.0, EAST.1, ", budget_tokens: 1000"),
            (WEST.0, WEST.1, ", budget_tokens: 1000"),
        ])
    ))
    .await;
    let admin = Admin::of(&obleth);
    let mut conn = redis_connection().await;
    let mut settled = 0;
    for (name, tz) in [EAST, WEST] {
        let (this_month, last_month, _) = months(tz);
        let id = tenant_id(&admin, name).await;
        let path = format!("/tenants/{name}/budget");
        let view = admin.ok("GET", &path, None, 200).await;
        assert_eq!(
            view["limits"]["period"], this_month,
            "{name} counts its budget in its own month: {view}"
        );
        // A key's scope is counted in its tenant's month too.
        let keys = admin
            .ok("GET", &format!("/tenants/{name}/keys"), None, 200)
            .await;
        let key_id = keys[0]["id"].as_str().unwrap_or_else(|| panic!("{keys}"));
        let key_view = admin
            .ok("GET", &format!("/keys/{key_id}/budget"), None, 200)
            .await;
        assert_eq!(key_view["limits"]["period"], this_month, "{key_view}");

        // The spend hash as the last request of the previous month left it:
        // the budget all used up.
        let spend = format!("{prefix}budget:{{t:{id}}}:spend");
        let _: () = redis::cmd("HSET")
            .arg(&spend)
            .arg(&["period", &last_month, "tokens", "1000", "usd", "0"])
            .query_async(&mut conn)
            .await
            .expect("seed last month's spend");
        let resp = post(&obleth, name).await;
        assert_eq!(
            resp.status(),
            200,
            "{name}: last month's spend does not count in {this_month}"
        );
        let body: Value = resp.json().await.expect("a completion");
        let reported = body["usage"]["total_tokens"].as_u64().expect("usage");
        settled += 1;
        let view = until_settled(&obleth, settled, &[&path]).await.remove(0);
        assert_eq!(
            standing(&view, "committed_tokens"),
            reported,
            "{name}: the new month holds only this request: {view}"
        );
        let (period, tokens): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&spend)
            .arg(&["period", "tokens"])
            .query_async(&mut conn)
            .await
            .expect("read the spend");
        assert_eq!(period.as_deref(), Some(this_month.as_str()));
        assert_eq!(tokens, Some(reported));

        // Spend of the current month does count.
        let _: () = redis::cmd("HSET")
            .arg(&spend)
            .arg(&["tokens", "1000"])
            .query_async(&mut conn)
            .await
            .expect("spend this month's budget");
        let refused = post(&obleth, name).await;
        assert_eq!(refused.status(), 403, "{name}");
        let body: Value = refused.json().await.expect("an error body");
        assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
    }
}

/// Inserts one usage row into the ledger, as the shipper would have.
async fn ledger_row(ch: &ClickHouse, tenant: &str, key: &str, at_ms: i64, tokens: (u64, u64)) {
    static ROW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = ROW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cost = tokens.0 as f64 * 1e-6 + tokens.1 as f64 * 2e-6;
    let sql = format!(
        "INSERT INTO obleth.usage (request_id, record_id, time, time_ms, tenant, key, model, route, status, \
         input_tokens, output_tokens, cost_usd) VALUES ('seeded-{n}', 'record-{n}', toDateTime({}), {at_ms}, \
         '{tenant}', '{key}', 'm', 'llm', 200, {}, {}, {cost})",
        at_ms.div_euclid(1000),
        tokens.0,
        tokens.1
    );
    ch.query(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[tokio::test]
async fn on_postgres_the_ledger_restores_spend_since_the_tenants_month_began_and_not_before_a_reset(
) {
    let ch = ClickHouse::start().await;
    let db = PgDatabase::create().await;
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    const AGAIN: (&str, &str) = ("again", "Europe/Berlin");
    let budget = ", budget_tokens: 1000000, budget_usd: 100";
    let tenants = [
        (EAST.0, EAST.1, budget),
        (WEST.0, WEST.1, budget),
        (AGAIN.0, AGAIN.1, budget),
    ];
    let config = ledger_config(&upstream, &db, &prefix, &ch, &tenants);
    let first = start_with_ledger(&config, &ch).await;
    let admin = Admin::of(&first);
    // A key of `east` with a budget of its own is restored too.
    let own = json!({ "name": "own", "budget_tokens": 500000 });
    let key = admin.post("/tenants/east/keys", own, 201).await;
    let key_id = key["key"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .to_string();
    for (name, tz) in [EAST, WEST] {
        let id = tenant_id(&admin, name).await;
        let (_, _, start) = months(tz);
        let key = if name == "east" { key_id.as_str() } else { "" };
        // A minute before the tenant's month began, and a minute after.
        ledger_row(&ch, &id, key, start - 60_000, (900, 100)).await;
        ledger_row(&ch, &id, key, start + 60_000, (30, 7)).await;
    }
    // `again`: spend, an audited reset, spend after it.
    let again = tenant_id(&admin, AGAIN.0).await;
    ledger_row(&ch, &again, "", now_ms() - 1, (900, 100)).await;
    admin
        .ok("POST", "/tenants/again/budget/reset", None, 200)
        .await;
    ledger_row(&ch, &again, "", now_ms() + 1, (30, 7)).await;
    drop(first);

    // Redis loses the spend (a flush, a restart without persistence).
    forget_budgets(&prefix).await;

    let restarted = Obleth::start(&config).await;
    restarted
        .wait_stderr("restored the committed spend of", Duration::from_secs(30))
        .await;
    let admin = Admin::of(&restarted);
    for path in [
        "/tenants/east/budget".to_string(),
        "/tenants/west/budget".to_string(),
        "/tenants/again/budget".to_string(),
        format!("/keys/{key_id}/budget"),
    ] {
        let view = admin.ok("GET", &path, None, 200).await;
        assert_eq!(
            (
                standing(&view, "committed_tokens"),
                standing(&view, "committed_usd_micros")
            ),
            (37, 30 + 2 * 7),
            "{path}: only the spend of this month in the tenant's timezone, after the last reset: {view}"
        );
    }
    assert!(
        restarted
            .stderr()
            .contains("restored the committed spend of 4 budget scopes"),
        "three tenants and one key:\n{}",
        restarted.stderr()
    );
    // The restored spend is what the next admission counts against.
    assert_eq!(post(&restarted, "west").await.status(), 200);
    let view = until_settled(&restarted, 1, &["/tenants/west/budget"])
        .await
        .remove(0);
    assert!(standing(&view, "committed_tokens") > 37, "{view}");
}

/// Rows of the Postgres store: tenants, keys, and audit rows by `seed`.
async fn stored(db: &PgDatabase) -> (i64, i64, Vec<String>) {
    let mut conn = db.connect().await;
    let count = |table: &str| format!("SELECT count(*) AS n FROM {table}");
    let tenants: i64 = sqlx::query(&count("tenants"))
        .fetch_one(&mut conn)
        .await
        .expect("count tenants")
        .get("n");
    let keys: i64 = sqlx::query(&count("api_keys"))
        .fetch_one(&mut conn)
        .await
        .expect("count keys")
        .get("n");
    let audit = sqlx::query("SELECT action FROM audit_log WHERE actor = 'seed' ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read the audit log")
        .iter()
        .map(|r| r.get::<String, _>("action"))
        .collect();
    (tenants, keys, audit)
}

#[tokio::test]
async fn seeding_postgres_is_idempotent_and_seeded_keys_work_after_restarts() {
    let db = PgDatabase::create().await;
    let upstream = mock("vllm").await;
    let config = |budget: u64| {
        format!(
            "pools:\n{}store:\n  database_url: '{}'\n{}{ROUTES}",
            pool("p", &[&upstream], ""),
            db.url,
            seed(&[(
                EAST.0,
                EAST.1,
                format!(", budget_tokens: {budget}").as_str()
            )])
        )
    };
    let first = Obleth::start(&config(1000)).await;
    assert_eq!(post(&first, "east").await.status(), 200);
    let (tenants, keys, audit) = stored(&db).await;
    assert_eq!((tenants, keys), (1, 1), "{audit:?}");
    assert!(
        audit.iter().any(|a| a.starts_with("tenant."))
            && audit.iter().any(|a| a.starts_with("model."))
            && audit.iter().any(|a| a.starts_with("key.")),
        "the seed is audited: {audit:?}"
    );
    drop(first);

    let again = Obleth::start(&config(1000)).await;
    assert_eq!(
        post(&again, "east").await.status(),
        200,
        "the seeded key still works"
    );
    assert_eq!(
        stored(&db).await,
        (1, 1, audit.clone()),
        "a restart with the same seed changes nothing"
    );
    drop(again);

    let changed = Obleth::start(&config(2000)).await;
    let tenant = Admin::of(&changed)
        .ok("GET", "/tenants/east", None, 200)
        .await;
    assert_eq!(tenant["budget_tokens"], 2000, "{tenant}");
    let (tenants, keys, after) = stored(&db).await;
    assert_eq!((tenants, keys), (1, 1));
    assert_eq!(
        after.len(),
        audit.len() + 1,
        "one change, one row: {after:?}"
    );
    assert!(
        after.last().is_some_and(|a| a.starts_with("tenant.")),
        "{after:?}"
    );
    assert_eq!(post(&changed, "east").await.status(), 200);
}

#[tokio::test]
async fn a_reset_that_cannot_be_looked_up_is_never_taken_for_no_reset() {
    let ch = ClickHouse::start().await;
    let db = PgDatabase::create().await;
    let upstream = mock("vllm").await;
    let prefix = redis_prefix();
    let tenants = [("again", "UTC", ", budget_tokens: 1000000")];
    let config = ledger_config(&upstream, &db, &prefix, &ch, &tenants);
    let first = start_with_ledger(&config, &ch).await;
    let admin = Admin::of(&first);
    let again = tenant_id(&admin, "again").await;
    // Spend, then an audited reset: the ledger still holds the spend.
    ledger_row(&ch, &again, "", now_ms() - 1, (900, 100)).await;
    admin
        .ok("POST", "/tenants/again/budget/reset", None, 200)
        .await;
    drop(first);
    // The reset's audit row cannot be read after the restart.
    let mut pg = db.connect().await;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_hidden")
        .execute(&mut pg)
        .await
        .expect("hide the audit log");

    let restarted = Obleth::start(&config).await;
    // The failed lookup is reported, not taken for "never reset".
    restarted
        .wait_stderr(
            "cannot check budgets against the usage ledger",
            Duration::from_secs(30),
        )
        .await;
    let view = Admin::of(&restarted)
        .ok("GET", "/tenants/again/budget", None, 200)
        .await;
    assert_eq!(
        standing(&view, "committed_tokens"),
        0,
        "spend from before the reset was restored: {view}"
    );
}
