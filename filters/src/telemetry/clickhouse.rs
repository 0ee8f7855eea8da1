//! ClickHouse as the usage sink: inserts in RowBinary without schema
//! validation (so ClickHouse 18.16 is served as well as current releases),
//! the schema of `migrations/clickhouse` (single-node, or replicated `ON
//! CLUSTER`), retention by day partition, and the queries behind the admin
//! API's usage endpoints. With several replicas listed, every call goes to
//! the replica that answered last and fails over to the next in the list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::shipper::{SinkError, UsageSink};
use super::UsageRecord;

const SCHEMA: &str = include_str!("../../../migrations/clickhouse/0001_usage.sql");
const OUTCOME: &str = include_str!("../../../migrations/clickhouse/0002_outcome.sql");
const MCP: &str = include_str!("../../../migrations/clickhouse/0003_mcp.sql");
/// The migrations that add columns to `usage`, each with the last column it
/// adds: it runs when that column is missing (ClickHouse 18.16 has no `ADD
/// COLUMN IF NOT EXISTS`).
const ADDED_COLUMNS: [(&str, &str); 2] = [(OUTCOME, "outcome"), (MCP, "mcp_tool")];

/// How to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// The HTTP interfaces, e.g. `http://127.0.0.1:8123`: one server, or
    /// the replicas of `cluster` in order of preference (never empty).
    pub urls: Vec<String>,
    pub database: String,
    /// With a cluster name the schema is created `ON CLUSTER` with
    /// replicated engines; without, single-node tables.
    pub cluster: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Bound on every request, so a hung server counts as a failure.
    pub timeout: Duration,
}

/// The usage table's row as inserted.
#[derive(Debug, Row, Serialize)]
struct UsageRow<'a> {
    request_id: &'a str,
    record_id: &'a str,
    time: u32,
    time_ms: u64,
    tenant: &'a str,
    key: &'a str,
    model: &'a str,
    route: &'a str,
    admission: &'a str,
    queue_wait_ms: u32,
    ttfb_ms: u32,
    total_ms: u32,
    status: u16,
    input_tokens: u64,
    output_tokens: u64,
    estimated: u8,
    cost_usd: f64,
    upstream: &'a str,
    replica: &'a str,
    batch: &'a str,
    outcome: &'a str,
    mcp_server: &'a str,
    mcp_method: &'a str,
    mcp_tool: &'a str,
}

/// Totals of one tenant, key or model over a time range.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct UsageTotals {
    pub name: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// One request of the recent request log.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct RequestRow {
    pub request_id: String,
    pub time_ms: u64,
    pub key: String,
    pub model: String,
    pub admission: String,
    pub queue_wait_ms: u32,
    pub ttfb_ms: u32,
    pub total_ms: u32,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// One ClickHouse server: a client on the usage database and one on the
/// server (for `CREATE DATABASE` and `system` tables).
struct Replica {
    url: String,
    client: Client,
    server: Client,
}

/// A ClickHouse connection (HTTP; cheap to clone) to one server or to the
/// replicas of a cluster.
#[derive(Clone)]
pub struct ClickHouseSink {
    replicas: Arc<[Replica]>,
    /// The replica calls go to first: the one that answered last.
    current: Arc<AtomicUsize>,
    config: ClickHouseConfig,
}

fn failed(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError(format!("clickhouse {what}: {e}"))
}

/// The ZooKeeper path shared by the replicas of `table`: `{shard}` is each
/// server's macro, so replicas of one shard share it.
fn zookeeper_path(database: &str, table: &str) -> String {
    format!("/clickhouse/tables/{{shard}}/{database}/{table}")
}

/// Recent insert blocks whose hashes ZooKeeper keeps per replicated table
/// (ClickHouse's default is 100): a batch retried on another replica, with
/// the same rows, is recognised and skipped while it is among them, however
/// many other processes insert meanwhile.
const DEDUPLICATION_WINDOW: u32 = 1000;

/// The replicated form of a migration: every object qualified with the
/// database and created `ON CLUSTER`, `ReplacingMergeTree` and
/// `SummingMergeTree` replaced by their replicated engines on ZooKeeper
/// paths under `/clickhouse/tables/{shard}/<database>/` with the
/// `{replica}` macro. Each rewrite must apply exactly once, so a migration
/// edited out of this shape fails loudly instead of creating a
/// non-replicated table on one server.
fn on_cluster(sql: &str, database: &str, cluster: &str) -> Result<String, SinkError> {
    let db = format!("`{database}`");
    let on = format!("ON CLUSTER `{cluster}`");
    let engine = |name: &str, table: &str| {
        format!(
            "ENGINE = Replicated{name}('{}', '{{replica}}')",
            zookeeper_path(database, table)
        )
    };
    let rewrites: Vec<(&str, String)> = if sql.contains("CREATE TABLE IF NOT EXISTS usage (") {
        vec![
            (
                "CREATE TABLE IF NOT EXISTS usage (",
                format!("CREATE TABLE IF NOT EXISTS {db}.usage {on} ("),
            ),
            (
                "ENGINE = ReplacingMergeTree()",
                engine("ReplacingMergeTree", "usage"),
            ),
            (
                "ORDER BY (tenant, time, request_id, record_id);",
                format!(
                    "ORDER BY (tenant, time, request_id, record_id)\n\
                     SETTINGS replicated_deduplication_window = {DEDUPLICATION_WINDOW};"
                ),
            ),
            (
                "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily",
                format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_daily {on}"),
            ),
            (
                "ENGINE = SummingMergeTree()",
                engine("SummingMergeTree", "usage_daily"),
            ),
            // Not deduplicated itself: two batches may well sum to the same
            // daily block, and a batch skipped as a duplicate in `usage`
            // never reaches the view.
            (
                "ORDER BY (tenant, model, day)\nAS SELECT",
                "ORDER BY (tenant, model, day)\nSETTINGS replicated_deduplication_window = 0\nAS SELECT"
                    .to_string(),
            ),
            ("FROM usage\n", format!("FROM {db}.usage\n")),
        ]
    } else {
        vec![(
            "ALTER TABLE usage ADD",
            format!("ALTER TABLE {db}.usage {on} ADD"),
        )]
    };
    let mut out = sql.to_string();
    for (from, to) in rewrites {
        if out.matches(from).count() != 1 {
            return Err(failed(
                "migrate",
                format!("the replicated schema expects {from:?} once in the migration"),
            ));
        }
        out = out.replacen(from, &to, 1);
    }
    Ok(out)
}

impl ClickHouseSink {
    pub fn new(config: ClickHouseConfig) -> Self {
        let replicas: Vec<Replica> = config
            .urls
            .iter()
            .map(|url| {
                let mut server = Client::default()
                    .with_url(url.clone())
                    .with_validation(false);
                if let Some(user) = &config.user {
                    server = server.with_user(user.clone());
                }
                if let Some(password) = &config.password {
                    server = server.with_password(password.clone());
                }
                let client = server.clone().with_database(config.database.clone());
                Replica {
                    url: url.clone(),
                    client,
                    server,
                }
            })
            .collect();
        Self {
            replicas: replicas.into(),
            current: Arc::new(AtomicUsize::new(0)),
            config,
        }
    }

    /// Runs `f` on the current replica, bounded by the timeout; when it
    /// fails, on the next one, each replica once at most. The first that
    /// answers becomes current, so a replica that went away is left at
    /// once and is tried again when the one after it fails. An insert
    /// retried this way sends the same rows, which a replicated table
    /// recognises by their block hash (see [`on_cluster`]).
    async fn bounded<T, F, Fut>(&self, what: &str, f: F) -> Result<T, SinkError>
    where
        F: Fn(&Replica) -> Fut,
        Fut: std::future::Future<Output = clickhouse::error::Result<T>>,
    {
        let n = self.replicas.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut error = failed(what, "no ClickHouse server configured");
        for i in 0..n {
            let at = (start + i) % n;
            let Some(replica) = self.replicas.get(at) else {
                break;
            };
            let result = match tokio::time::timeout(self.config.timeout, f(replica)).await {
                Ok(result) => result.map_err(|e| failed(what, e)),
                Err(_) => Err(failed(what, "timed out")),
            };
            match result {
                Ok(value) => {
                    if at != start
                        && self
                            .current
                            .compare_exchange(start, at, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(replica = %replica.url, "ClickHouse calls fail over to this replica");
                    }
                    return Ok(value);
                }
                Err(e) => {
                    if n > 1 {
                        tracing::debug!(replica = %replica.url, "ClickHouse replica failed: {e}");
                    }
                    error = e;
                }
            }
        }
        Err(error)
    }

    /// Creates the database, the usage table and the daily rollup: on the
    /// server, or `ON CLUSTER` with replicated engines when a cluster is
    /// configured. Objects the answering server already has are left
    /// alone, so a migration that a replica down made fail completes on
    /// the next attempt (the cluster's DDL queue in ZooKeeper brings the
    /// replica up to date once it is back).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        match &self.config.cluster {
            None => self.migrate_single().await,
            Some(cluster) => self.migrate_cluster(cluster).await,
        }
    }

    async fn migrate_single(&self) -> Result<(), SinkError> {
        let create = format!("CREATE DATABASE IF NOT EXISTS `{}`", self.config.database);
        self.bounded("create database", |r| r.server.query(&create).execute())
            .await?;
        for statement in statements(SCHEMA) {
            self.bounded("migrate", |r| r.client.query(&statement).execute())
                .await?;
        }
        for (migration, column) in ADDED_COLUMNS {
            if !self.has_column(column).await? {
                for statement in statements(migration) {
                    self.bounded("migrate", |r| r.client.query(&statement).execute())
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn has_column(&self, column: &str) -> Result<bool, SinkError> {
        let n = self
            .bounded("migrate", |r| {
                r.server
                    .query(
                        "SELECT count() FROM system.columns \
                         WHERE database = ? AND table = 'usage' AND name = ?",
                    )
                    .bind(&self.config.database)
                    .bind(column)
                    .fetch_one::<u64>()
            })
            .await?;
        Ok(n > 0)
    }

    /// The engine of `table` in the usage database, `None` when it does
    /// not exist (on the answering server).
    async fn engine(&self, table: &str) -> Result<Option<String>, SinkError> {
        let engines: Vec<String> = self
            .bounded("migrate", |r| {
                r.server
                    .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
                    .bind(&self.config.database)
                    .bind(table)
                    .fetch_all()
            })
            .await?;
        Ok(engines.into_iter().next())
    }

    async fn migrate_cluster(&self, cluster: &str) -> Result<(), SinkError> {
        let database = &self.config.database;
        let has_database = || async {
            let n: u64 = self
                .bounded("migrate", |r| {
                    r.server
                        .query("SELECT count() FROM system.databases WHERE name = ?")
                        .bind(database)
                        .fetch_one()
                })
                .await?;
            Ok::<bool, SinkError>(n > 0)
        };
        if !has_database().await? {
            let create =
                format!("CREATE DATABASE IF NOT EXISTS `{database}` ON CLUSTER `{cluster}`");
            if let Err(e) = self.ddl(create).await {
                self.done_here(e, has_database().await?)?;
            }
        }
        let replicated = on_cluster(SCHEMA, database, cluster)?;
        let creates = statements(&replicated);
        for (table, create) in ["usage", "usage_daily"].into_iter().zip(creates) {
            match self.engine(table).await? {
                Some(engine) if table == "usage" && !engine.starts_with("Replicated") => {
                    return Err(failed(
                        "migrate",
                        format!(
                            "telemetry.clickhouse.cluster is set but {database}.usage is a {engine}, \
                             not replicated: converting an existing table is a manual step"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    if let Err(e) = self.ddl(create).await {
                        self.done_here(e, self.engine(table).await?.is_some())?;
                    }
                }
            }
        }
        for (migration, column) in ADDED_COLUMNS {
            if !self.has_column(column).await? {
                for statement in statements(&on_cluster(migration, database, cluster)?) {
                    if let Err(e) = self.ddl(statement).await {
                        self.done_here(e, self.has_column(column).await?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a distributed DDL statement through the current replica (not
    /// failed over: the statement is the cluster's, whoever relays it).
    /// It waits for every replica to run it; one that is down would hold
    /// it for ClickHouse's default of 180 s, so the wait is bounded below
    /// the timeout.
    async fn ddl(&self, sql: String) -> Result<(), SinkError> {
        let at = self.current.load(Ordering::Relaxed);
        let Some(replica) = self.replicas.get(at) else {
            return Err(failed("migrate", "no ClickHouse server configured"));
        };
        let wait = self.config.timeout.as_secs().saturating_sub(1).max(1);
        let run = replica
            .server
            .query(&sql)
            .with_setting("distributed_ddl_task_timeout", wait.to_string())
            .execute();
        match tokio::time::timeout(self.config.timeout, run).await {
            Ok(result) => result.map_err(|e| failed("migrate", e)),
            Err(_) => Err(failed("migrate", "timed out")),
        }
    }

    /// A DDL statement that failed (typically: not every replica answered
    /// in time) is done as far as this migration goes if the answering
    /// replica has the object now: the others run the statement from the
    /// cluster's DDL queue in ZooKeeper, once they are back.
    fn done_here(&self, e: SinkError, present: bool) -> Result<(), SinkError> {
        if present {
            tracing::warn!("ClickHouse schema created here; replicas that did not answer in time apply it from the DDL queue: {e}");
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Drops day partitions older than `days`.
    pub async fn drop_older_than(&self, days: u32) -> Result<usize, SinkError> {
        let cutoff = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(24 * i64::from(days)))
            .map_err(|e| failed("retention", e))?
            .strftime("%Y%m%d")
            .to_string();
        let partitions: Vec<String> = self
            .bounded("retention", |r| {
                r.server
                    .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'usage' AND active AND partition < ?")
                    .bind(&self.config.database)
                    .bind(&cutoff)
                    .fetch_all()
            })
            .await?;
        for partition in &partitions {
            if partition.chars().all(|c| c.is_ascii_digit()) {
                let drop = format!("ALTER TABLE usage DROP PARTITION {partition}");
                // Replicated: the drop goes to every replica through ZooKeeper.
                self.bounded("retention", |r| r.client.query(&drop).execute())
                    .await?;
            }
        }
        Ok(partitions.len())
    }

    /// Totals over `[from, to)` (Unix seconds) by `by` (`tenant`, `key` or
    /// `model`), optionally for one tenant.
    pub async fn totals(
        &self,
        by: &str,
        from: i64,
        to: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageTotals>, SinkError> {
        let column = match by {
            "key" => "key",
            "model" => "model",
            _ => "tenant",
        };
        let sql = format!(
            "SELECT {column} AS name, count() AS requests, sum(input_tokens), sum(output_tokens), sum(cost_usd) \
             FROM usage FINAL WHERE time >= toDateTime(?) AND time < toDateTime(?) AND (? = '' OR tenant = ?) \
             GROUP BY name ORDER BY name"
        );
        let tenant = tenant.unwrap_or("");
        self.bounded("usage query", |r| {
            r.client
                .query(&sql)
                .bind(from)
                .bind(to)
                .bind(tenant)
                .bind(tenant)
                .fetch_all()
        })
        .await
    }

    /// Tokens and USD micros the ledger holds for a tenant (`by` =
    /// `tenant`) or key (`by` = `key`) since `since_ms`.
    pub async fn spent(&self, by: &str, id: &str, since_ms: u64) -> Result<(u64, u64), SinkError> {
        let column = if by == "key" { "key" } else { "tenant" };
        let sql = format!(
            "SELECT sum(input_tokens + output_tokens), sum(cost_usd) FROM usage FINAL \
             WHERE {column} = ? AND time_ms >= ?"
        );
        let (tokens, usd): (u64, f64) = self
            .bounded("ledger query", |r| {
                r.client.query(&sql).bind(id).bind(since_ms).fetch_one()
            })
            .await?;
        Ok((tokens, (usd * 1e6).round().max(0.0) as u64))
    }

    /// The latest `limit` requests of `tenant`, newest first.
    pub async fn recent(&self, tenant: &str, limit: u32) -> Result<Vec<RequestRow>, SinkError> {
        self.bounded("request log query", |r| {
            r.client
                .query(
                    "SELECT request_id, time_ms, key, model, admission, queue_wait_ms, ttfb_ms, total_ms, status, \
                     input_tokens, output_tokens, cost_usd FROM usage FINAL WHERE tenant = ? \
                     ORDER BY time_ms DESC LIMIT ?",
                )
                .bind(tenant)
                .bind(limit)
                .fetch_all()
        })
        .await
    }
}

#[async_trait]
impl UsageSink for ClickHouseSink {
    async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError> {
        // The same rows in the same order on every replica tried: a block a
        // replica took before it failed is then recognised by its hash.
        let send = |replica: &Replica| {
            let client = replica.client.clone();
            async move {
                let mut insert = client.insert::<UsageRow>("usage").await?;
                for r in rows {
                    insert
                        .write(&UsageRow {
                            request_id: &r.request_id,
                            record_id: &r.record_id,
                            time: (r.time_ms / 1000) as u32,
                            time_ms: r.time_ms,
                            tenant: &r.tenant,
                            key: &r.key,
                            model: &r.model,
                            route: &r.route,
                            admission: &r.admission,
                            queue_wait_ms: r.queue_wait_ms,
                            ttfb_ms: r.ttfb_ms,
                            total_ms: r.total_ms,
                            status: r.status,
                            input_tokens: r.input_tokens,
                            output_tokens: r.output_tokens,
                            estimated: u8::from(r.estimated),
                            cost_usd: r.cost_usd,
                            upstream: &r.upstream,
                            replica: &r.replica,
                            batch,
                            outcome: r.outcome.label(),
                            mcp_server: r.mcp.as_ref().map_or("", |m| m.server.as_str()),
                            mcp_method: r.mcp.as_ref().map_or("", |m| m.method.as_str()),
                            mcp_tool: r.mcp.as_ref().map_or("", |m| m.tool.as_str()),
                        })
                        .await?;
                }
                insert.end().await
            }
        };
        self.bounded("insert", send).await
    }

    /// Replicated tables recognise a block sent again by its hash.
    fn deduplicates_retries(&self) -> bool {
        self.config.cluster.is_some()
    }

    async fn inserted(&self, batch: &str, rows: &[UsageRecord]) -> Result<u64, SinkError> {
        // The rows' time range lets ClickHouse read only their partitions.
        let seconds = rows.iter().map(|r| r.time_ms / 1000);
        let (from, to) = (
            seconds.clone().min().unwrap_or(0),
            seconds.max().unwrap_or(0),
        );
        self.bounded("batch lookup", |r| {
            r.client
                .query(
                    "SELECT count() FROM usage WHERE batch = ? \
                     AND time >= toDateTime(?) AND time <= toDateTime(?)",
                )
                .bind(batch)
                .bind(from)
                .bind(to)
                .fetch_one::<u64>()
        })
        .await
    }
}

/// The statements of a SQL file: `;`-separated, comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replicated_schema_is_the_single_node_one_on_cluster_with_replicated_engines() {
        let schema = on_cluster(SCHEMA, "obleth", "usage").expect("rewritten");
        let statements = statements(&schema);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].starts_with(
            "CREATE TABLE IF NOT EXISTS `obleth`.usage ON CLUSTER `usage` (\n    request_id String,"
        ));
        assert!(statements[0].contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/obleth/usage', '{replica}')\n\
             PARTITION BY toYYYYMMDD(time)\n\
             ORDER BY (tenant, time, request_id, record_id)\n\
             SETTINGS replicated_deduplication_window = 1000"
        ));
        assert!(statements[1].starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `obleth`.usage_daily ON CLUSTER `usage`\n\
             ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/obleth/usage_daily', '{replica}')"
        ));
        assert!(statements[1].contains(
            "ORDER BY (tenant, model, day)\nSETTINGS replicated_deduplication_window = 0\nAS SELECT"
        ));
        assert!(statements[1].contains("FROM `obleth`.usage\nGROUP BY day, tenant, model"));
        // Same columns as the single-node table.
        let columns = |sql: &str| {
            sql.lines()
                .filter(|l| l.starts_with("    ") && l.trim_end().ends_with(','))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            columns(&statements[0]),
            columns(&super::statements(SCHEMA)[0])
        );
        let outcome = on_cluster(OUTCOME, "obleth", "usage").expect("rewritten");
        assert_eq!(
            super::statements(&outcome),
            ["ALTER TABLE `obleth`.usage ON CLUSTER `usage` ADD COLUMN outcome String DEFAULT 'completed'"]
        );
    }

    #[test]
    fn a_migration_out_of_the_expected_shape_is_refused_rather_than_created_unreplicated() {
        let edited = SCHEMA.replace("ReplacingMergeTree()", "MergeTree()");
        assert!(on_cluster(&edited, "obleth", "usage").is_err());
        assert!(on_cluster("ALTER TABLE usage DROP COLUMN x", "obleth", "usage").is_err());
    }

    #[test]
    fn every_replica_shares_the_path_of_its_shard() {
        assert_eq!(
            zookeeper_path("billing", "usage"),
            "/clickhouse/tables/{shard}/billing/usage"
        );
    }
}
