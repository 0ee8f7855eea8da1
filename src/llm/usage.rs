//! Usage telemetry in the running process: the write-ahead log every LLM
//! request's record goes to, and, with ClickHouse configured, the tasks
//! that create its schema, ship the log and enforce retention.

use std::sync::Arc;
use std::time::Duration;

use obleth_filters::telemetry::{ClickHouseSink, UsageRecord, UsageSink, Wal};
use tokio::sync::watch;

use crate::config::{ClickHouseSettings, OnFull, TelemetrySettings};

/// The log and where it is shipped.
pub struct Telemetry {
    pub wal: Arc<Wal>,
    pub on_full: OnFull,
    pub replica: String,
    /// Answers the admin API's usage queries.
    pub clickhouse: Option<ClickHouseSink>,
    /// Turns true once the ClickHouse schema exists, so the ledger check
    /// against a fresh ClickHouse waits for it instead of failing.
    pub schema_ready: watch::Receiver<bool>,
}

impl Telemetry {
    /// Opens the log and, on the current runtime, starts shipping it.
    pub fn start(settings: &TelemetrySettings) -> std::io::Result<Telemetry> {
        let wal = Arc::new(Wal::open(settings.wal.clone()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("write-ahead log {}: {e}", settings.wal.dir.display()),
            )
        })?);
        let (schema_tx, schema_ready) = watch::channel(false);
        let clickhouse = settings.clickhouse.as_ref().map(|ch| {
            let sink = ClickHouseSink::new(ch.connection.clone());
            crate::supervision::spawn(
                "usage shipping",
                ship(wal.clone(), sink.clone(), ch.clone(), schema_tx),
            );
            sink
        });
        Ok(Telemetry {
            wal,
            on_full: settings.on_full,
            replica: settings.replica.clone(),
            clickhouse,
            schema_ready,
        })
    }

    /// Whether new LLM requests are refused because their usage could
    /// not be recorded.
    pub fn refusing(&self) -> bool {
        self.on_full == OnFull::Refuse && self.wal.under_pressure()
    }

    /// Logs a record; a drop is counted by the log and warned about here.
    pub fn record(&self, record: UsageRecord) {
        if let Err(dropped) = self.wal.append(record) {
            tracing::warn!("usage record dropped: {dropped}");
        }
    }
}

/// Creates the schema (retrying while ClickHouse is away), then ships the
/// log for as long as the process runs, dropping old partitions hourly.
async fn ship(
    wal: Arc<Wal>,
    sink: ClickHouseSink,
    settings: ClickHouseSettings,
    schema_ready: watch::Sender<bool>,
) {
    let mut pause = Duration::from_millis(200);
    while let Err(e) = sink.migrate().await {
        tracing::warn!("cannot create the ClickHouse usage schema, retrying: {e}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
    schema_ready.send_replace(true);
    if settings.retention_days > 0 {
        let sink = sink.clone();
        crate::supervision::spawn("usage retention", async move {
            loop {
                match sink.drop_older_than(settings.retention_days).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("dropped {n} usage partitions past retention"),
                    Err(e) => tracing::warn!("usage retention: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
    }
    let sink: Arc<dyn UsageSink> = Arc::new(sink);
    wal.ship(sink, settings.shipping).await;
}
