//! Usage telemetry in the running process: the write-ahead log every LLM
//! request's record goes to, and, with ClickHouse configured, the tasks
//! that create its schema, ship the log, enforce retention and restore
//! committed budget spend from the usage ledger.

use std::sync::Arc;
use std::time::Duration;

use obleth_filters::telemetry::{ClickHouseSink, UsageRecord, UsageSink, Wal};

use crate::config::{ClickHouseSettings, OnFull, TelemetrySettings};

/// The log and where it is shipped.
pub struct Telemetry {
    pub wal: Arc<Wal>,
    pub on_full: OnFull,
    pub replica: String,
    /// Answers the admin API's usage queries.
    pub clickhouse: Option<ClickHouseSink>,
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
        let clickhouse = settings.clickhouse.as_ref().map(|ch| {
            let sink = ClickHouseSink::new(ch.connection.clone());
            crate::supervision::spawn(
                "usage shipping",
                ship(wal.clone(), sink.clone(), ch.clone()),
            );
            sink
        });
        Ok(Telemetry {
            wal,
            on_full: settings.on_full,
            replica: settings.replica.clone(),
            clickhouse,
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
async fn ship(wal: Arc<Wal>, sink: ClickHouseSink, settings: ClickHouseSettings) {
    let mut pause = Duration::from_millis(200);
    while let Err(e) = sink.migrate().await {
        tracing::warn!("cannot create the ClickHouse usage schema, retrying: {e}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
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

/// Restores committed spend the budget store lost (a Redis flush or a
/// restart without persistence; in-process budgets after any restart) from
/// the usage ledger: at start-up and every few minutes, each scope with a
/// term budget is raised to what ClickHouse holds for its current period
/// (since its last audited reset). Raising never lowers spend, so a ledger
/// that lags the live spend by the records not yet shipped changes nothing.
pub async fn restore_budgets(llm: Arc<crate::llm::LlmState>) {
    let Some(ledger) = llm.telemetry.clickhouse.clone() else {
        return;
    };
    loop {
        match restore_once(&llm, &ledger).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "restored the committed spend of {n} budget scopes from the usage ledger"
            ),
            Err(e) => tracing::warn!("cannot check budgets against the usage ledger: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

async fn restore_once(
    llm: &crate::llm::LlmState,
    ledger: &ClickHouseSink,
) -> Result<usize, String> {
    use obleth_filters::budget::Cost;
    let now = jiff::Timestamp::now();
    let mut restored = 0;
    for record in llm.store.tenants().await.map_err(|e| e.to_string())? {
        let tenant: obleth_filters::records::Tenant = record.into();
        let keys = llm
            .store
            .keys_of_tenant(&tenant.id)
            .await
            .map_err(|e| e.to_string())?;
        let scopes = std::iter::once((
            "tenant",
            tenant.id.clone(),
            crate::llm::tenant_scope(&tenant, now),
        ))
        .chain(
            keys.iter()
                .map(|k| ("key", k.id.clone(), crate::llm::key_scope(k, &tenant, now))),
        );
        for (entity, id, scope) in scopes {
            let l = &scope.limits;
            if l.budget_tokens.is_none() && l.budget_usd_micros.is_none() {
                continue;
            }
            let since = crate::llm::period_start(&tenant, now)
                .max(last_reset(llm, entity, &id, &l.period).await);
            let (tokens, usd_micros) = ledger
                .spent(entity, &id, since)
                .await
                .map_err(|e| e.to_string())?;
            if tokens == 0 && usd_micros == 0 {
                continue;
            }
            let raised = llm
                .budgets
                .raise_committed(&scope, Cost { tokens, usd_micros }, since)
                .await
                .map_err(|e| e.to_string())?;
            restored += usize::from(raised);
        }
    }
    Ok(restored)
}

/// When the scope's committed spend was last reset in `period` (audited),
/// as Unix milliseconds; 0 when never.
async fn last_reset(llm: &crate::llm::LlmState, entity: &str, id: &str, period: &str) -> u64 {
    let action = format!("{entity}.budget_reset");
    llm.store
        .audit_log(Some(entity), Some(id), None, 100)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.action == action && e.detail["period"] == period)
        .and_then(|e| e.at)
        .map_or(0, |at| at.max(0) as u64)
}
