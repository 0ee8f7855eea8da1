//! Token budgets that are never overspent. Before the upstream call a
//! request's worst-case cost is reserved, atomically and in one round trip
//! per scope, against the scope's tokens-per-minute bucket and its term
//! budget; nothing is reserved when it does not fit. After the call the
//! actual cost is settled exactly once per request id: committed, the
//! reservation released, the unused part returned to the bucket.
//!
//! Two stores share these semantics: Redis (Lua scripts, one scope's keys
//! under one hash tag, so Redis Cluster works) for many replicas, and an
//! in-process one for a single replica without Redis.

use std::collections::HashMap;
use std::sync::Mutex;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::redis_link::Connection;
use async_trait::async_trait;
use redis::Script;

use crate::redis_link::{Outcome, RedisLink};

/// How long an unsettled reservation is kept (a crashed replica's
/// reservations stop counting after this).
pub const RESERVATION_TTL_SECS: u64 = 3600;
/// How long a settled request id is remembered, so repeats are no-ops.
pub const SETTLED_TTL_SECS: u64 = 86_400;
/// Longest wait for Redis on the request path before `fail_open` applies.
pub const REDIS_DEADLINE: std::time::Duration = std::time::Duration::from_millis(750);

/// Settlements kept for replay while Redis is down; beyond this the oldest
/// are given up (and counted by the caller as failed).
const PENDING_SETTLEMENTS: usize = 100_000;
/// How often deferred settlements are retried while Redis is up.
const REPLAY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

async fn within_deadline<T>(
    link: &RedisLink,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BudgetUnavailable> {
    match tokio::time::timeout(REDIS_DEADLINE, f).await {
        Ok(Ok(v)) => {
            link.observe(Outcome::Answered);
            Ok(v)
        }
        Ok(Err(e)) => {
            link.observe(Outcome::Failed(&e));
            Err(BudgetUnavailable(e.to_string()))
        }
        Err(_) => {
            link.observe(Outcome::TimedOut);
            Err(BudgetUnavailable(format!(
                "no answer within {REDIS_DEADLINE:?}"
            )))
        }
    }
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
const STORE_DOWN: &str = "budget store down";

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
    async fn settle(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable>;

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

/// Wall-clock Unix milliseconds, what budget periods and resets are kept in.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn limit_arg(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v as i64)
}

/// A settlement that could not reach Redis, replayed when it is back.
struct PendingSettlement {
    scope: Scope,
    request_id: String,
    actual: Cost,
    now_ms: i64,
}

/// Budgets in Redis.
pub struct RedisBudgets {
    link: RedisLink,
    prefix: String,
    reserve: Script,
    raise: Script,
    reservation_ttl: u64,
    settler: Arc<Settler>,
}

/// Replicas that must acknowledge a budget write before it counts, so a
/// failover (which promotes a replica) cannot lose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    pub replicas: u32,
    /// Must stay under [`REDIS_DEADLINE`].
    pub timeout: std::time::Duration,
}

/// Settles in Redis, keeping what could not reach it for replay.
struct Settler {
    link: RedisLink,
    prefix: String,
    settle: Script,
    pending: Mutex<VecDeque<PendingSettlement>>,
    acks: std::sync::OnceLock<ReplicaAcks>,
}

/// Keys of one scope share the hash tag `{scope}`, so each script's keys
/// lie in one Redis Cluster slot.
fn scope_key(prefix: &str, scope: &Scope, suffix: &str) -> String {
    format!("{prefix}{{{}}}:{suffix}", scope.id)
}

/// `KEYS` of reserve.lua: bucket, spend, this request's reservation, the
/// open reservations.
fn reserve_keys(prefix: &str, scope: &Scope, request_id: &str) -> [String; 4] {
    let key = |suffix: &str| scope_key(prefix, scope, suffix);
    [
        key("bucket"),
        key("spend"),
        key(&format!("res:{request_id}")),
        key("open"),
    ]
}

/// `KEYS` of settle.lua: bucket, spend, this request's reservation, its
/// settled marker, the open reservations.
fn settle_keys(prefix: &str, scope: &Scope, request_id: &str) -> [String; 5] {
    let key = |suffix: &str| scope_key(prefix, scope, suffix);
    [
        key("bucket"),
        key("spend"),
        key(&format!("res:{request_id}")),
        key(&format!("done:{request_id}")),
        key("open"),
    ]
}

impl RedisBudgets {
    /// Budgets on `link`; settlements made while Redis is down are replayed
    /// once it is back (the scripts make a repeated settlement a no-op).
    /// Must run on a Tokio runtime.
    pub fn new(link: RedisLink, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let settler = Arc::new(Settler {
            link: link.clone(),
            prefix: prefix.clone(),
            settle: Script::new(concat!(
                include_str!("scope.lua"),
                include_str!("settle.lua")
            )),
            pending: Mutex::default(),
            acks: std::sync::OnceLock::new(),
        });
        tokio::spawn(replay_when_back(Arc::downgrade(&settler)));
        Self {
            link,
            prefix,
            reserve: Script::new(concat!(
                include_str!("scope.lua"),
                include_str!("reserve.lua")
            )),
            raise: Script::new(include_str!("raise.lua")),
            reservation_ttl: RESERVATION_TTL_SECS,
            settler,
        }
    }

    /// How long an unsettled reservation holds budget before it is
    /// released (its request's process died); default an hour.
    pub fn with_reservation_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.reservation_ttl = ttl.as_secs().max(1);
        self
    }

    /// Makes every reservation and settlement wait until `acks.replicas`
    /// replicas hold it (Redis' `WAIT`). One that is not acknowledged in
    /// time is taken back (a reservation) or kept for replay (a
    /// settlement), and the caller applies `fail_open`.
    pub fn with_replica_acks(self, acks: ReplicaAcks) -> Self {
        if acks.replicas > 0 {
            let _ = self.settler.acks.set(acks);
        }
        self
    }

    /// The connection, or at once an error while Redis is known down.
    fn conn(&self) -> Result<Connection, BudgetUnavailable> {
        connection(&self.link)
    }

    /// Settlements waiting for Redis to come back.
    pub fn pending_settlements(&self) -> usize {
        self.settler
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn key(&self, scope: &Scope, suffix: &str) -> String {
        scope_key(&self.prefix, scope, suffix)
    }
}

fn connection(link: &RedisLink) -> Result<Connection, BudgetUnavailable> {
    link.connection()
        .ok_or_else(|| BudgetUnavailable(STORE_DOWN.into()))
}

impl Settler {
    fn defer(&self, settlement: PendingSettlement) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= PENDING_SETTLEMENTS {
            pending.pop_front();
        }
        pending.push_back(settlement);
    }

    async fn settle_now(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable> {
        let mut conn = connection(&self.link)?;
        let keys = settle_keys(&self.prefix, scope, request_id);
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(&keys[..])
            .arg(now_ms)
            .arg(scope.limits.tokens_per_minute)
            .arg(actual.tokens)
            .arg(actual.usd_micros)
            .arg(&scope.limits.period)
            .arg(SETTLED_TTL_SECS)
            .arg(request_id);
        let reply: Vec<i64> =
            within_deadline(&self.link, invocation.invoke_async(&mut conn)).await?;
        self.confirm(&mut conn, &keys[1]).await?;
        Ok(reply.first() == Some(&1))
    }

    /// Waits for the replicas [`RedisBudgets::with_replica_acks`] asks
    /// for to hold what was written so far on `conn` (the master of `key`).
    async fn confirm(&self, conn: &mut Connection, key: &str) -> Result<(), BudgetUnavailable> {
        let Some(acks) = self.acks.get() else {
            return Ok(());
        };
        let acked = within_deadline(
            &self.link,
            conn.wait_for_replicas(key, acks.replicas, acks.timeout),
        )
        .await?;
        if acked < acks.replicas {
            return Err(BudgetUnavailable(format!(
                "{acked} of {} replicas acknowledged the budget write within {:?}",
                acks.replicas, acks.timeout
            )));
        }
        Ok(())
    }
}

/// Replays the deferred settlements each time Redis comes back, until the
/// budgets are dropped.
async fn replay_when_back(settler: std::sync::Weak<Settler>) {
    let Some(mut up) = settler.upgrade().map(|s| s.link.watch()) else {
        return;
    };
    loop {
        // On every return of Redis, and now and then for a settlement
        // that failed without Redis being taken for down (a timeout).
        tokio::select! {
            changed = up.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(REPLAY_EVERY) => {}
        }
        if !*up.borrow_and_update() {
            continue;
        }
        let Some(settler) = settler.upgrade() else {
            return;
        };
        let waiting: Vec<_> = settler
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let mut replayed = 0usize;
        for s in waiting {
            match settler
                .settle_now(&s.scope, &s.request_id, s.actual, s.now_ms)
                .await
            {
                Ok(_) => replayed += 1,
                Err(_) => settler.defer(s),
            }
        }
        if replayed > 0 {
            tracing::info!(
                "{replayed} settlements made while the budget store was down are applied"
            );
        }
    }
}

#[async_trait]
impl BudgetStore for RedisBudgets {
    async fn reserve(
        &self,
        scope: &Scope,
        request_id: &str,
        estimate: Cost,
        now_ms: i64,
    ) -> Result<Decision, BudgetUnavailable> {
        let l = &scope.limits;
        let mut conn = self.conn()?;
        let keys = reserve_keys(&self.prefix, scope, request_id);
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(&keys[..])
            .arg(now_ms)
            .arg(l.tokens_per_minute)
            .arg(estimate.tokens)
            .arg(estimate.usd_micros)
            .arg(limit_arg(l.budget_tokens))
            .arg(limit_arg(l.budget_usd_micros))
            .arg(&l.period)
            .arg(self.reservation_ttl)
            .arg(request_id);
        let answered: Result<Vec<i64>, _> =
            within_deadline(&self.link, invocation.invoke_async(&mut conn)).await;
        let confirmed = match answered {
            Ok(reply) if reply.first() == Some(&1) => self
                .settler
                .confirm(&mut conn, &keys[1])
                .await
                .map(|()| reply),
            other => other,
        };
        let reply: Vec<i64> = match confirmed {
            Ok(reply) => reply,
            Err(e) => {
                // The script may have run although its answer was lost (a
                // timeout), or a failover may lose it (not acknowledged):
                // the caller, told it failed, never settles this scope, so
                // the reservation is taken back by the replay of a
                // zero-cost settlement, which is a no-op if none was made.
                self.settler.defer(PendingSettlement {
                    scope: scope.clone(),
                    request_id: request_id.to_string(),
                    actual: Cost::default(),
                    now_ms,
                });
                return Err(e);
            }
        };
        Ok(match reply.as_slice() {
            [1, remaining] | [2, remaining] => Decision::Admitted {
                remaining_tokens: (*remaining >= 0).then_some(*remaining as u64),
            },
            [2] => Decision::Admitted {
                remaining_tokens: None,
            },
            [0, retry] => Decision::RateLimited {
                retry_after_ms: (*retry).max(1) as u64,
            },
            [3] => Decision::BudgetExhausted,
            [4] => Decision::TooLarge,
            other => return Err(BudgetUnavailable(format!("unexpected reply {other:?}"))),
        })
    }

    async fn settle(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable> {
        let result = self
            .settler
            .settle_now(scope, request_id, actual, now_ms)
            .await;
        if result.is_err() {
            self.settler.defer(PendingSettlement {
                scope: scope.clone(),
                request_id: request_id.to_string(),
                actual,
                now_ms,
            });
        }
        result
    }

    async fn standing(&self, scope: &Scope, now_ms: i64) -> Result<Standing, BudgetUnavailable> {
        let mut conn = self.conn()?;
        let bucket: (Option<f64>, Option<i64>) = within_deadline(
            &self.link,
            redis::cmd("HMGET")
                .arg(self.key(scope, "bucket"))
                .arg("level")
                .arg("ts")
                .query_async(&mut conn),
        )
        .await?;
        let spend: (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        ) = within_deadline(
            &self.link,
            redis::cmd("HMGET")
                .arg(self.key(scope, "spend"))
                .arg(&["period", "tokens", "usd", "rtokens", "rusd"])
                .query_async(&mut conn),
        )
        .await?;
        let tpm = scope.limits.tokens_per_minute;
        let bucket_tokens = (tpm > 0).then(|| {
            let level = bucket.0.unwrap_or(tpm as f64);
            let ts = bucket.1.unwrap_or(now_ms);
            let refilled = level + (now_ms - ts).max(0) as f64 * tpm as f64 / 60_000.0;
            refilled.min(tpm as f64).max(0.0) as u64
        });
        let same_period = spend.0.as_deref().is_none_or(|p| p == scope.limits.period);
        Ok(Standing {
            bucket_tokens,
            committed_tokens: if same_period { spend.1.unwrap_or(0) } else { 0 },
            committed_usd_micros: if same_period { spend.2.unwrap_or(0) } else { 0 },
            reserved_tokens: spend.3.unwrap_or(0),
            reserved_usd_micros: spend.4.unwrap_or(0),
        })
    }

    async fn reset_term(&self, scope: &Scope) -> Result<(), BudgetUnavailable> {
        let mut conn = self.conn()?;
        within_deadline(
            &self.link,
            redis::cmd("HSET")
                .arg(self.key(scope, "spend"))
                .arg(&[
                    "tokens",
                    "0",
                    "usd",
                    "0",
                    "period",
                    scope.limits.period.as_str(),
                    "reset_at",
                    &unix_ms().to_string(),
                ])
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    async fn raise_committed(
        &self,
        scope: &Scope,
        ledger: Cost,
        since_ms: u64,
    ) -> Result<bool, BudgetUnavailable> {
        let mut conn = self.conn()?;
        let mut invocation = self.raise.key(self.key(scope, "spend"));
        invocation
            .arg(&scope.limits.period)
            .arg(ledger.tokens)
            .arg(ledger.usd_micros)
            .arg(since_ms);
        let raised: i64 = within_deadline(&self.link, invocation.invoke_async(&mut conn)).await?;
        Ok(raised == 1)
    }
}

#[derive(Default)]
struct ScopeState {
    level: f64,
    ts: i64,
    bucket_started: bool,
    period: String,
    tokens: u64,
    usd: u64,
    reserved_tokens: u64,
    reserved_usd: u64,
    reservations: HashMap<String, Cost>,
    settled: HashMap<String, i64>,
    /// When committed spend was last reset, Unix ms.
    reset_at: u64,
}

impl ScopeState {
    fn refill(&mut self, tpm: u64, now: i64) -> f64 {
        if !self.bucket_started {
            self.bucket_started = true;
            self.level = tpm as f64;
            self.ts = now;
        }
        if now > self.ts {
            self.level =
                (self.level + (now - self.ts) as f64 * tpm as f64 / 60_000.0).min(tpm as f64);
            self.ts = now;
        }
        self.level
    }

    fn roll_period(&mut self, period: &str) {
        if self.period != period {
            if !self.period.is_empty() {
                self.tokens = 0;
                self.usd = 0;
            }
            self.period = period.to_string();
        }
    }
}

/// Budgets in this process only (one replica, no Redis).
#[derive(Default)]
pub struct LocalBudgets {
    scopes: Mutex<HashMap<String, ScopeState>>,
}

impl LocalBudgets {
    fn lock(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, ScopeState>>, BudgetUnavailable> {
        self.scopes
            .lock()
            .map_err(|_| BudgetUnavailable("in-process budgets are poisoned".into()))
    }
}

#[async_trait]
impl BudgetStore for LocalBudgets {
    async fn reserve(
        &self,
        scope: &Scope,
        request_id: &str,
        estimate: Cost,
        now_ms: i64,
    ) -> Result<Decision, BudgetUnavailable> {
        let mut scopes = self.lock()?;
        let s = scopes.entry(scope.id.clone()).or_default();
        let l = &scope.limits;
        if s.reservations.contains_key(request_id) {
            return Ok(Decision::Admitted {
                remaining_tokens: None,
            });
        }
        let tpm = l.tokens_per_minute;
        let mut level = None;
        if tpm > 0 {
            if estimate.tokens > tpm {
                return Ok(Decision::TooLarge);
            }
            let current = s.refill(tpm, now_ms);
            if current < estimate.tokens as f64 {
                let wait =
                    ((estimate.tokens as f64 - current) * 60_000.0 / tpm as f64).ceil() as u64;
                return Ok(Decision::RateLimited {
                    retry_after_ms: wait.max(1),
                });
            }
            level = Some(current);
        }
        s.roll_period(&l.period);
        if l.budget_tokens.is_some_and(|b| {
            s.tokens
                .saturating_add(s.reserved_tokens)
                .saturating_add(estimate.tokens)
                > b
        }) || l.budget_usd_micros.is_some_and(|b| {
            s.usd
                .saturating_add(s.reserved_usd)
                .saturating_add(estimate.usd_micros)
                > b
        }) {
            return Ok(Decision::BudgetExhausted);
        }
        if let Some(current) = level {
            s.level = current - estimate.tokens as f64;
        }
        s.reserved_tokens = s.reserved_tokens.saturating_add(estimate.tokens);
        s.reserved_usd = s.reserved_usd.saturating_add(estimate.usd_micros);
        s.reservations.insert(request_id.to_string(), estimate);
        Ok(Decision::Admitted {
            remaining_tokens: level.map(|_| s.level.max(0.0) as u64),
        })
    }

    async fn settle(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable> {
        let mut scopes = self.lock()?;
        let s = scopes.entry(scope.id.clone()).or_default();
        s.settled
            .retain(|_, at| now_ms - *at < SETTLED_TTL_SECS as i64 * 1000);
        if s.settled.contains_key(request_id) {
            return Ok(false);
        }
        let reserved = s.reservations.remove(request_id).unwrap_or_default();
        s.roll_period(&scope.limits.period);
        // Actual usage comes from the upstream: it must not wrap.
        s.tokens = s.tokens.saturating_add(actual.tokens);
        s.usd = s.usd.saturating_add(actual.usd_micros);
        s.reserved_tokens = s.reserved_tokens.saturating_sub(reserved.tokens);
        s.reserved_usd = s.reserved_usd.saturating_sub(reserved.usd_micros);
        let tpm = scope.limits.tokens_per_minute;
        if tpm > 0 {
            let level = s.refill(tpm, now_ms);
            s.level = (level + reserved.tokens as f64 - actual.tokens as f64).min(tpm as f64);
        }
        s.settled.insert(request_id.to_string(), now_ms);
        Ok(true)
    }

    async fn standing(&self, scope: &Scope, now_ms: i64) -> Result<Standing, BudgetUnavailable> {
        let mut scopes = self.lock()?;
        let s = scopes.entry(scope.id.clone()).or_default();
        let tpm = scope.limits.tokens_per_minute;
        let bucket_tokens = (tpm > 0).then(|| s.refill(tpm, now_ms).max(0.0) as u64);
        let same_period = s.period.is_empty() || s.period == scope.limits.period;
        Ok(Standing {
            bucket_tokens,
            committed_tokens: if same_period { s.tokens } else { 0 },
            committed_usd_micros: if same_period { s.usd } else { 0 },
            reserved_tokens: s.reserved_tokens,
            reserved_usd_micros: s.reserved_usd,
        })
    }

    async fn reset_term(&self, scope: &Scope) -> Result<(), BudgetUnavailable> {
        let mut scopes = self.lock()?;
        let s = scopes.entry(scope.id.clone()).or_default();
        s.tokens = 0;
        s.usd = 0;
        s.period = scope.limits.period.clone();
        s.reset_at = unix_ms();
        Ok(())
    }

    async fn raise_committed(
        &self,
        scope: &Scope,
        ledger: Cost,
        since_ms: u64,
    ) -> Result<bool, BudgetUnavailable> {
        let mut scopes = self.lock()?;
        let s = scopes.entry(scope.id.clone()).or_default();
        s.roll_period(&scope.limits.period);
        if s.reset_at > since_ms || (s.tokens >= ledger.tokens && s.usd >= ledger.usd_micros) {
            return Ok(false);
        }
        s.tokens = s.tokens.max(ledger.tokens);
        s.usd = s.usd.max(ledger.usd_micros);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scripts_keys_lie_in_one_cluster_slot_for_every_scope_shape() {
        use crate::redis_link::key_slot;
        // Tenant and key scopes as the gateway names them, and prefixes with
        // and without colons or braces of their own.
        let ids = ["t:ten_01hx8k2m", "k:key_01hx8k2n", "t:", "k:key_{odd}"];
        let prefixes = ["obleth:budget:", "", "a:b:c:", "x}{y:"];
        for prefix in prefixes {
            for id in ids {
                let scope = Scope {
                    id: id.into(),
                    ..scope(1000, Some(5))
                };
                let request = "0f3c9a1e5b7d4c2a8e6f0b1d3c5a7e9f";
                let scripts: [(&str, Vec<String>); 3] = [
                    ("reserve", reserve_keys(prefix, &scope, request).to_vec()),
                    ("settle", settle_keys(prefix, &scope, request).to_vec()),
                    ("raise", vec![scope_key(prefix, &scope, "spend")]),
                ];
                let slot = key_slot(scope_key(prefix, &scope, "spend").as_bytes());
                for (script, keys) in scripts {
                    for key in keys {
                        assert_eq!(
                            key_slot(key.as_bytes()),
                            slot,
                            "{script}.lua: {key} is in another slot than its scope"
                        );
                    }
                }
            }
        }
    }

    fn scope(tpm: u64, budget: Option<u64>) -> Scope {
        Scope {
            id: "t:test".into(),
            limits: Limits {
                tokens_per_minute: tpm,
                budget_tokens: budget,
                budget_usd_micros: None,
                period: "lifetime".into(),
            },
        }
    }

    fn cost(tokens: u64) -> Cost {
        Cost {
            tokens,
            usd_micros: 0,
        }
    }

    /// `b`'s answer to reserving `tokens` for `id` at `now_ms`.
    async fn reserve(b: &LocalBudgets, s: &Scope, id: &str, tokens: u64, now_ms: i64) -> Decision {
        b.reserve(s, id, cost(tokens), now_ms).await.unwrap()
    }

    fn admitted(remaining_tokens: u64) -> Decision {
        Decision::Admitted {
            remaining_tokens: Some(remaining_tokens),
        }
    }

    fn rate_limited(retry_after_ms: u64) -> Decision {
        Decision::RateLimited { retry_after_ms }
    }

    #[tokio::test]
    async fn local_store_reserves_refunds_and_refills() {
        let b = LocalBudgets::default();
        let s = scope(600, None);
        assert_eq!(reserve(&b, &s, "r1", 500, 0).await, admitted(100));
        assert_eq!(reserve(&b, &s, "r2", 200, 0).await, rate_limited(10_000));
        assert!(
            b.settle(&s, "r1", cost(100), 0).await.unwrap(),
            "400 tokens refunded"
        );
        assert!(
            !b.settle(&s, "r1", cost(100), 0).await.unwrap(),
            "settles once"
        );
        assert_eq!(reserve(&b, &s, "r2", 200, 0).await, admitted(300));
        // 600 per minute: 10 per second refill.
        assert_eq!(reserve(&b, &s, "r3", 310, 0).await, rate_limited(1_000));
        assert!(matches!(
            reserve(&b, &s, "r3", 310, 1_000).await,
            Decision::Admitted { .. }
        ));
        assert_eq!(reserve(&b, &s, "big", 601, 1_000).await, Decision::TooLarge);
    }

    #[tokio::test]
    async fn local_store_term_budget_counts_reservations_and_commits() {
        let b = LocalBudgets::default();
        let s = scope(0, Some(1000));
        assert!(matches!(
            reserve(&b, &s, "a", 600, 0).await,
            Decision::Admitted { .. }
        ));
        assert_eq!(
            reserve(&b, &s, "b", 600, 0).await,
            Decision::BudgetExhausted
        );
        b.settle(&s, "a", cost(300), 0).await.unwrap();
        assert!(matches!(
            reserve(&b, &s, "b", 700, 0).await,
            Decision::Admitted { .. }
        ));
        assert_eq!(reserve(&b, &s, "c", 1, 0).await, Decision::BudgetExhausted);
        let mut next_month = s.clone();
        next_month.limits.period = "2026-12".into();
        let mut this_month = s.clone();
        this_month.limits.period = "2026-11".into();
        let b = LocalBudgets::default();
        b.reserve(&this_month, "x", cost(900), 0).await.unwrap();
        b.settle(&this_month, "x", cost(900), 0).await.unwrap();
        assert_eq!(
            reserve(&b, &this_month, "y", 200, 0).await,
            Decision::BudgetExhausted
        );
        assert!(matches!(
            reserve(&b, &next_month, "y", 200, 0).await,
            Decision::Admitted { .. }
        ));
    }
}
