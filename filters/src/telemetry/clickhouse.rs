//! ClickHouse as the usage sink: inserts in RowBinary without schema
//! validation (so ClickHouse 18.16 is served as well as current releases),
//! the schema of `migrations/clickhouse`, retention by day partition, and
//! the queries behind the admin API's usage endpoints.

use std::time::Duration;

use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::shipper::{SinkError, UsageSink};
use super::UsageRecord;

const SCHEMA: &str = include_str!("../../../migrations/clickhouse/0001_usage.sql");
const OUTCOME: &str = include_str!("../../../migrations/clickhouse/0002_outcome.sql");

/// How to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
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

/// A ClickHouse connection (HTTP; cheap to clone).
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    server: Client,
    config: ClickHouseConfig,
}

fn failed(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError(format!("clickhouse {what}: {e}"))
}

impl ClickHouseSink {
    pub fn new(config: ClickHouseConfig) -> Self {
        let mut server = Client::default()
            .with_url(config.url.clone())
            .with_validation(false);
        if let Some(user) = &config.user {
            server = server.with_user(user.clone());
        }
        if let Some(password) = &config.password {
            server = server.with_password(password.clone());
        }
        let client = server.clone().with_database(config.database.clone());
        Self {
            client,
            server,
            config,
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.config.timeout, f).await {
            Ok(result) => result.map_err(|e| failed(what, e)),
            Err(_) => Err(failed(what, "timed out")),
        }
    }

    /// Creates the database, the usage table and the daily rollup.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let create = format!("CREATE DATABASE IF NOT EXISTS `{}`", self.config.database);
        self.bounded("create database", self.server.query(&create).execute())
            .await?;
        for statement in statements(SCHEMA) {
            self.bounded("migrate", self.client.query(&statement).execute())
                .await?;
        }
        let has_outcome = self
            .bounded(
                "migrate",
                self.client
                    .query(
                        "SELECT count() FROM system.columns \
                         WHERE database = currentDatabase() AND table = 'usage' AND name = 'outcome'",
                    )
                    .fetch_one::<u64>(),
            )
            .await?;
        if has_outcome == 0 {
            for statement in statements(OUTCOME) {
                self.bounded("migrate", self.client.query(&statement).execute())
                    .await?;
            }
        }
        Ok(())
    }

    /// Drops day partitions older than `days`.
    pub async fn drop_older_than(&self, days: u32) -> Result<usize, SinkError> {
        let cutoff = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(24 * i64::from(days)))
            .map_err(|e| failed("retention", e))?
            .strftime("%Y%m%d")
            .to_string();
        let partitions: Vec<String> = self
            .bounded(
                "retention",
                self.server
                    .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'usage' AND active AND partition < ?")
                    .bind(&self.config.database)
                    .bind(&cutoff)
                    .fetch_all(),
            )
            .await?;
        for partition in &partitions {
            if partition.chars().all(|c| c.is_ascii_digit()) {
                let drop = format!("ALTER TABLE usage DROP PARTITION {partition}");
                self.bounded("retention", self.client.query(&drop).execute())
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
        self.bounded(
            "usage query",
            self.client
                .query(&sql)
                .bind(from)
                .bind(to)
                .bind(tenant)
                .bind(tenant)
                .fetch_all(),
        )
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
            .bounded(
                "ledger query",
                self.client.query(&sql).bind(id).bind(since_ms).fetch_one(),
            )
            .await?;
        Ok((tokens, (usd * 1e6).round().max(0.0) as u64))
    }

    /// The latest `limit` requests of `tenant`, newest first.
    pub async fn recent(&self, tenant: &str, limit: u32) -> Result<Vec<RequestRow>, SinkError> {
        self.bounded(
            "request log query",
            self.client
                .query(
                    "SELECT request_id, time_ms, key, model, admission, queue_wait_ms, ttfb_ms, total_ms, status, \
                     input_tokens, output_tokens, cost_usd FROM usage FINAL WHERE tenant = ? \
                     ORDER BY time_ms DESC LIMIT ?",
                )
                .bind(tenant)
                .bind(limit)
                .fetch_all(),
        )
        .await
    }
}

#[async_trait]
impl UsageSink for ClickHouseSink {
    async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError> {
        let send = async {
            let mut insert = self.client.insert::<UsageRow>("usage").await?;
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
                    })
                    .await?;
            }
            insert.end().await
        };
        self.bounded("insert", send).await
    }

    async fn inserted(&self, batch: &str, rows: &[UsageRecord]) -> Result<u64, SinkError> {
        // The rows' time range lets ClickHouse read only their partitions.
        let seconds = rows.iter().map(|r| r.time_ms / 1000);
        let (from, to) = (
            seconds.clone().min().unwrap_or(0),
            seconds.max().unwrap_or(0),
        );
        self.bounded(
            "batch lookup",
            self.client
                .query(
                    "SELECT count() FROM usage WHERE batch = ? \
                     AND time >= toDateTime(?) AND time <= toDateTime(?)",
                )
                .bind(batch)
                .bind(from)
                .bind(to)
                .fetch_one::<u64>(),
        )
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
