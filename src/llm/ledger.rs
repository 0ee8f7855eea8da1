//! Committed budget spend restored from the usage ledger in ClickHouse.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use obleth_filters::budget::{BudgetStore, BudgetUnavailable, Cost};
use obleth_filters::telemetry::{ClickHouseSink, SinkError, Wal};

use super::scopes::{key_scope, period_start, tenant_scope};
use crate::store::{Store, StoreError};

/// Why one pass over the budget scopes stopped (the next pass retries).
#[derive(Debug, thiserror::Error)]
enum LedgerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("usage ledger: {0}")]
    Ledger(#[from] SinkError),
    #[error("budget store: {0}")]
    Budgets(#[from] BudgetUnavailable),
    #[error("usage log: {0}")]
    Log(#[from] std::io::Error),
}

/// How often committed spend is checked against the ledger anyway.
const PERIODIC_CHECK: Duration = Duration::from_secs(300);
/// The second check after Redis came back, once the other replicas'
/// batches have shipped (a batch waits `batch_interval`, 1 s by default).
const FOLLOW_UP_CHECK: Duration = Duration::from_secs(10);

/// Restores committed spend the budget store lost (a Redis flush or a
/// restart without persistence; in-process budgets after any restart) from
/// the usage ledger: at start-up and every few minutes, each scope with a
/// term budget is raised to what ClickHouse holds for its current period
/// (since its last audited reset) plus the records of the local usage log
/// not shipped yet, so a Redis that lost everything gets back all of it.
/// Raising never lowers spend. `redis_up` (with Redis) also triggers a pass
/// the moment Redis is back after an outage: a Redis restarted empty would
/// otherwise admit each tenant's whole budget again until the next pass;
/// a second pass follows shortly after, for the spend other replicas had
/// not shipped yet at the first.
pub async fn restore_budgets(
    store: Store,
    budgets: Arc<dyn BudgetStore>,
    ledger: ClickHouseSink,
    wal: Arc<Wal>,
    mut schema_ready: watch::Receiver<bool>,
    mut redis_up: Option<watch::Receiver<bool>>,
) {
    if schema_ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    let mut wait = PERIODIC_CHECK;
    loop {
        match restore_once(&store, budgets.as_ref(), &ledger, &wal).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "restored the committed spend of {n} budget scopes from the usage ledger"
            ),
            Err(e) => tracing::warn!("cannot check budgets against the usage ledger: {e}"),
        }
        let back = async {
            match redis_up.as_mut() {
                Some(up) => {
                    let _ = up.wait_for(|up| !*up).await;
                    up.wait_for(|up| *up).await.is_ok()
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => wait = PERIODIC_CHECK,
            true = back => {
                tracing::info!("budget store back: checking budgets against the usage ledger");
                // Other replicas' spend still in their logs reaches the
                // ledger within their batch interval: look once more then.
                wait = FOLLOW_UP_CHECK;
            }
        }
    }
}

async fn restore_once(
    store: &Store,
    budgets: &dyn BudgetStore,
    ledger: &ClickHouseSink,
    wal: &Arc<Wal>,
) -> Result<usize, LedgerError> {
    let now = jiff::Timestamp::now();
    let mut restored = 0;
    for record in store.tenants().await? {
        let tenant: obleth_filters::records::Tenant = record.into();
        let keys = store.keys_of_tenant(&tenant.id).await?;
        let scopes = std::iter::once(("tenant", tenant.id.clone(), tenant_scope(&tenant, now)))
            .chain(
                keys.iter()
                    .map(|k| ("key", k.id.clone(), key_scope(k, &tenant, now))),
            );
        for (entity, id, scope) in scopes {
            let l = &scope.limits;
            if l.budget_tokens.is_none() && l.budget_usd_micros.is_none() {
                continue;
            }
            let since =
                period_start(&tenant, now).max(last_reset(store, entity, &id, &l.period).await?);
            let (shipped, shipped_usd) = ledger.spent(entity, &id, since).await?;
            // What the local log has not shipped yet is spent too.
            let (wal, who, key) = (wal.clone(), entity, id.clone());
            let (unshipped, unshipped_usd) =
                tokio::task::spawn_blocking(move || wal.unshipped_spend(who, &key, since))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r)?;
            let (tokens, usd_micros) = (shipped + unshipped, shipped_usd + unshipped_usd);
            if tokens == 0 && usd_micros == 0 {
                continue;
            }
            let raised = budgets
                .raise_committed(&scope, Cost { tokens, usd_micros }, since)
                .await?;
            restored += usize::from(raised);
        }
    }
    Ok(restored)
}

/// When the scope's committed spend was last reset in `period` (audited),
/// as Unix milliseconds; 0 when never. A failed lookup is an error, not
/// "never": taking it for never would raise spend an operator had reset.
async fn last_reset(
    store: &Store,
    entity: &str,
    id: &str,
    period: &str,
) -> Result<u64, StoreError> {
    let action = format!("{entity}.budget_reset");
    Ok(store
        .audit_log(Some(entity), Some(id), None, 100)
        .await?
        .into_iter()
        .find(|e| e.action == action && e.detail["period"] == period)
        .and_then(|e| e.at)
        .map_or(0, |at| at.max(0) as u64))
}
