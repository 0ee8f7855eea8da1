//! Token budgets that are never overspent. Before the upstream call a
//! request's worst-case cost is reserved against each of its scopes'
//! tokens-per-minute bucket and term budget; nothing is reserved when it
//! does not fit. After the call the actual cost is settled exactly once
//! per request id: committed, the reservation released, the unused part
//! returned to the bucket.
//!
//! - [`local`]: the whole scope in this process (one replica, no Redis);
//! - [`redis`]: scopes in Redis shared by replicas, each admitting locally
//!   against a lease it renews with one atomic script (`lease.lua`);
//! - `lease`: the local side of one lease, where the exactness is kept.
//!
//! The guarantees of leasing (overshoot, under-use, Redis slow or down) are
//! set out in `conf/README.md` under "Budgets".

mod lease;
pub mod local;
pub mod redis;

pub use local::LocalBudgets;
pub use redis::{RedisBudgets, ReplicaAcks, LEASE_TTL};

use async_trait::async_trait;

/// How long an unsettled reservation is kept (a crashed replica's
/// reservations stop counting after this).
pub const RESERVATION_TTL_SECS: u64 = 3600;
/// How long a settled request id is remembered, so repeats are no-ops.
pub const SETTLED_TTL_SECS: u64 = 86_400;
/// Longest wait for Redis on the request path before `fail_open` applies.
pub const REDIS_DEADLINE: std::time::Duration = std::time::Duration::from_millis(750);

/// Wall-clock Unix milliseconds, what budget periods and resets are kept in.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one scope (a tenant, or a key with limits of its own) may spend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Limits {
    /// 0 = unlimited.
    pub tokens_per_minute: u64,
    pub budget_tokens: Option<u64>,
    pub budget_usd_micros: Option<u64>,
    /// `lifetime`, or the month (`2026-11`) in the tenant's timezone.
    pub period: String,
}

impl Limits {
    /// Whether any limit applies (a scope without any needs no reservation).
    pub fn is_limited(&self) -> bool {
        self.tokens_per_minute > 0
            || self.budget_tokens.is_some()
            || self.budget_usd_micros.is_some()
    }
}

/// A scope and its limits, e.g. `t:ten_123`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scope {
    pub id: String,
    pub limits: Limits,
}

/// A cost in tokens and USD millionths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub tokens: u64,
    pub usd_micros: u64,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reserved; tokens left in the bucket (`None` when unlimited).
    Admitted { remaining_tokens: Option<u64> },
    /// The bucket refills enough in `retry_after_ms`.
    RateLimited { retry_after_ms: u64 },
    /// The estimate exceeds the whole per-minute bucket.
    TooLarge,
    /// The term budget cannot cover the estimate.
    BudgetExhausted,
}

/// The store could not be asked; the caller applies `fail_open`.
#[derive(Debug, thiserror::Error)]
#[error("budget store unavailable: {0}")]
pub struct BudgetUnavailable(pub String);

/// What a call says while the breaker is open.
pub(crate) const STORE_DOWN: &str = "budget store down";

impl BudgetUnavailable {
    /// Whether the call was skipped because Redis is known down (the link
    /// has logged that once; callers need not log each request).
    pub fn is_store_down(&self) -> bool {
        self.0 == STORE_DOWN
    }
}

/// Reserve and settle, with the same semantics in every store.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    async fn reserve(
        &self,
        scope: &Scope,
        request_id: &str,
        estimate: Cost,
        now_ms: i64,
    ) -> Result<Decision, BudgetUnavailable>;

    /// Returns false when `request_id` was already settled (nothing changed).
    /// Never waits for the network: a store that keeps its budgets
    /// elsewhere sends the settlement in the background.
    async fn settle(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable>;

    /// Takes back the reservation of a request refused by another of its
    /// scopes: nothing is charged.
    async fn release(&self, scope: &Scope, request_id: &str);

    /// The scope's bucket, committed and reserved spend in its current period.
    async fn standing(&self, scope: &Scope, now_ms: i64) -> Result<Standing, BudgetUnavailable>;

    /// Sets the committed spend of the current period back to zero
    /// (reservations in flight still count).
    async fn reset_term(&self, scope: &Scope) -> Result<(), BudgetUnavailable>;

    /// Raises the committed spend of the current period to at least
    /// `ledger` (what the usage ledger says was spent since `since_ms`),
    /// never lowering it, and not at all when the spend was reset after
    /// `since_ms`; true when it raised anything.
    async fn raise_committed(
        &self,
        scope: &Scope,
        ledger: Cost,
        since_ms: u64,
    ) -> Result<bool, BudgetUnavailable>;

    /// How admissions and lease renewals went, for the metrics; `None` for
    /// a store without leases.
    fn lease_stats(&self) -> Option<LeaseStats> {
        None
    }
}

/// Totals of a leasing store since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Requests admitted against a lease already held (no round trip).
    pub admitted_locally: u64,
    /// Requests admitted after a renewal made for them.
    pub admitted_after_renewal: u64,
    /// Renewals sent in the background, answered and not.
    pub background: Renewals,
    /// Renewals a waiting request sent, answered and not.
    pub for_request: Renewals,
}

/// Renewals of one trigger; one not answered is sent again later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renewals {
    pub answered: u64,
    pub failed: u64,
}

/// Where a scope stands, for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Standing {
    /// Tokens in the per-minute bucket now (`None`: unlimited).
    pub bucket_tokens: Option<u64>,
    pub committed_tokens: u64,
    pub committed_usd_micros: u64,
    pub reserved_tokens: u64,
    pub reserved_usd_micros: u64,
}
