//! Budgets in Redis, shared by every replica, admitted locally against
//! leases. Each replica renews its lease on a scope (`lease.lua`): commits
//! what it settled, hands back what it holds beyond its need and takes a
//! slice for the requests to come. A request that fits the lease is
//! admitted with no round trip; one that does not waits for a renewal made
//! for it. Settling never waits: its cost joins the next renewal, which a
//! background task sends within [`RENEW_EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;
use tokio::sync::Notify;

use super::lease::{Grant, Lease, Renewal};
use super::{
    BudgetStore, BudgetUnavailable, Cost, Decision, LeaseStats, Renewals, Scope, Standing,
    REDIS_DEADLINE, RESERVATION_TTL_SECS, STORE_DOWN,
};
use crate::redis_link::{Connection, Outcome, RedisLink};

/// How long a lease is held without renewal before Redis gives its slices
/// back (a replica that died); renewed well before, while in use.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often settled spend is committed (and leases topped up) at most:
/// settlements in between share one renewal per scope.
pub const RENEW_EVERY: Duration = Duration::from_millis(5);
/// A lease not used for this long hands back everything not in flight.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// A lease holding nothing is forgotten after this long unused.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often the background task looks at leases with nothing to send.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Replicas that must acknowledge a budget write before it counts, so a
/// failover (which promotes a replica) cannot lose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    pub replicas: u32,
    /// Must stay under [`REDIS_DEADLINE`].
    pub timeout: Duration,
}

/// Budgets in Redis.
pub struct RedisBudgets {
    inner: Arc<Inner>,
}

struct Inner {
    link: RedisLink,
    prefix: String,
    /// This process's name in lease records: new at every start, so a
    /// restarted replica never mistakes an old renewal for its own.
    owner: String,
    lease: Script,
    raise: Script,
    reservation_ttl: AtomicU64,
    lease_ttl_ms: AtomicU64,
    acks: OnceLock<ReplicaAcks>,
    leases: Mutex<HashMap<String, Arc<ScopeLease>>>,
    wake: Notify,
    stats: Counters,
}

/// One scope's lease: its state, and the lock that keeps one renewal of
/// it under way at a time (their answers must be taken in order).
struct ScopeLease {
    state: Mutex<Lease>,
    renewing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Counters {
    admitted_locally: AtomicU64,
    admitted_after_renewal: AtomicU64,
    /// Answered and failed renewals, in the background and for requests.
    renewals: [[AtomicU64; 2]; 2],
    applied_after_outage: AtomicUsize,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn limit_arg(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| v as i64)
}

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

/// Keys of one scope share the hash tag `{scope}`, so each script's keys
/// lie in one Redis Cluster slot.
pub(super) fn scope_key(prefix: &str, scope: &Scope, suffix: &str) -> String {
    format!("{prefix}{{{}}}:{suffix}", scope.id)
}

/// `KEYS` of lease.lua: bucket, spend, per-request reservations, leases,
/// lease expiries, this owner's last applied renewal.
pub(super) fn lease_keys(prefix: &str, scope: &Scope, owner: &str) -> [String; 6] {
    let key = |suffix: &str| scope_key(prefix, scope, suffix);
    [
        key("bucket"),
        key("spend"),
        key("open"),
        key("leases"),
        key("lease-expiry"),
        key(&format!("seq:{owner}")),
    ]
}

impl RedisBudgets {
    /// Budgets on `link`. Must run on a Tokio runtime: a background task
    /// commits settlements and keeps leases renewed until the store is
    /// dropped.
    pub fn new(link: RedisLink, prefix: impl Into<String>) -> Self {
        let mut owner = [0u8; 8];
        if openssl::rand::rand_bytes(&mut owner).is_err() {
            owner = unix_ms().to_be_bytes();
        }
        let inner = Arc::new(Inner {
            link,
            prefix: prefix.into(),
            owner: hex::encode(owner),
            lease: Script::new(include_str!("lease.lua")),
            raise: Script::new(include_str!("raise.lua")),
            reservation_ttl: AtomicU64::new(RESERVATION_TTL_SECS),
            lease_ttl_ms: AtomicU64::new(LEASE_TTL.as_millis() as u64),
            acks: OnceLock::new(),
            leases: Mutex::default(),
            wake: Notify::new(),
            stats: Counters::default(),
        });
        tokio::spawn(renew_in_background(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// How long an unsettled request holds budget before it is released
    /// (a leak guard), and how long the in-flight part of a dead replica's
    /// lease stays reserved; default an hour.
    pub fn with_reservation_ttl(self, ttl: Duration) -> Self {
        self.inner
            .reservation_ttl
            .store(ttl.as_secs().max(1), Ordering::Relaxed);
        self
    }

    /// How long a lease outlives its last renewal in Redis (how soon a dead
    /// replica's slices come back); default [`LEASE_TTL`].
    pub fn with_lease_ttl(self, ttl: Duration) -> Self {
        self.inner
            .lease_ttl_ms
            .store(ttl.as_millis().max(1000) as u64, Ordering::Relaxed);
        self
    }

    /// Makes every renewal wait until `acks.replicas` replicas hold it
    /// (Redis' `WAIT`). One that is not acknowledged in time counts as not
    /// answered: it is sent again, and a request waiting on it gets
    /// `fail_open`.
    pub fn with_replica_acks(self, acks: ReplicaAcks) -> Self {
        if acks.replicas > 0 {
            let _ = self.inner.acks.set(acks);
        }
        self
    }
}

impl Inner {
    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.load(Ordering::Relaxed))
    }

    /// How long a renewed lease is used for admission: well inside its TTL
    /// in Redis, so Redis never gives back a slice still being used.
    fn usable_for(&self) -> Duration {
        self.lease_ttl() / 2
    }

    fn reservation_ttl_ms(&self) -> i64 {
        self.reservation_ttl.load(Ordering::Relaxed) as i64 * 1000
    }

    /// The lease on `scope`, made on first use; its limits follow the
    /// scope's (an operator may change them at any time).
    fn lease_of(&self, scope: &Scope) -> Arc<ScopeLease> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let lease = leases.entry(scope.id.clone()).or_insert_with(|| {
            Arc::new(ScopeLease {
                state: Mutex::new(Lease::new(scope.clone())),
                renewing: tokio::sync::Mutex::new(()),
            })
        });
        let lease = lease.clone();
        drop(leases);
        let mut state = lease.lock();
        if state.scope != *scope {
            state.scope = scope.clone();
        }
        drop(state);
        lease
    }

    fn existing_lease(&self, scope: &Scope) -> Option<Arc<ScopeLease>> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&scope.id)
            .cloned()
    }

    fn connection(&self) -> Result<Connection, BudgetUnavailable> {
        self.link
            .connection()
            .ok_or_else(|| BudgetUnavailable(STORE_DOWN.into()))
    }

    /// Sends one renewal of `lease` (the caller holds its `renewing` lock)
    /// and takes in the answer.
    async fn renew(
        &self,
        lease: &ScopeLease,
        need: Option<Cost>,
        now_ms: i64,
    ) -> Result<Grant, BudgetUnavailable> {
        let trigger = usize::from(need.is_some());
        let (scope, renewal) = {
            let mut state = lease.lock();
            let renewal = state.plan(need, now_ms);
            (state.scope.clone(), renewal)
        };
        let sent_at = Instant::now();
        match self.send(&scope, &renewal).await {
            Ok(grant) => {
                let mut state = lease.lock();
                let after_outage = state.failing;
                let applied = state.renewed(&renewal, grant, sent_at, self.usable_for());
                self.stats.renewals[trigger][0].fetch_add(1, Ordering::Relaxed);
                if after_outage && applied > 0 {
                    self.stats
                        .applied_after_outage
                        .fetch_add(applied, Ordering::Relaxed);
                }
                Ok(grant)
            }
            Err(e) => {
                self.stats.renewals[trigger][1].fetch_add(1, Ordering::Relaxed);
                lease.lock().renewal_failed();
                Err(e)
            }
        }
    }

    /// Runs `lease.lua` for `renewal`, and waits for the replicas asked for.
    async fn send(&self, scope: &Scope, renewal: &Renewal) -> Result<Grant, BudgetUnavailable> {
        let mut conn = self.connection()?;
        let keys = lease_keys(&self.prefix, scope, &self.owner);
        let l = &scope.limits;
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(&keys[..])
            .arg(renewal.now_ms)
            .arg(l.tokens_per_minute)
            .arg(limit_arg(l.budget_tokens))
            .arg(limit_arg(l.budget_usd_micros))
            .arg(&l.period)
            .arg(self.lease_ttl().as_secs().max(1))
            .arg(self.reservation_ttl.load(Ordering::Relaxed))
            .arg(&self.owner)
            .arg(renewal.seq)
            .arg(renewal.commit.tokens)
            .arg(renewal.commit.usd_micros)
            .arg(renewal.held.tokens)
            .arg(renewal.held.usd_micros)
            .arg(renewal.need.tokens)
            .arg(renewal.need.usd_micros)
            .arg(renewal.headroom.tokens)
            .arg(renewal.headroom.usd_micros)
            .arg(renewal.kept)
            .arg(renewal.returned)
            .arg(renewal.bucket_need)
            .arg(renewal.bucket_headroom);
        let reply: Vec<i64> =
            within_deadline(&self.link, invocation.invoke_async(&mut conn)).await?;
        self.confirm(&mut conn, &keys[1]).await?;
        match reply[..] {
            [term_tokens, term_usd, bucket, level, retry, exhausted] => Ok(Grant {
                term: Cost {
                    tokens: term_tokens.max(0) as u64,
                    usd_micros: term_usd.max(0) as u64,
                },
                bucket: bucket.max(0) as u64,
                level: level.max(0) as f64 / 1000.0,
                retry_after_ms: (retry > 0).then_some(retry as u64),
                exhausted: exhausted == 1,
            }),
            _ => Err(BudgetUnavailable(format!("unexpected reply {reply:?}"))),
        }
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

    /// Renews `lease` for a request that does not fit it, then admits or
    /// refuses the request.
    async fn reserve_by_renewal(
        &self,
        lease: &ScopeLease,
        request_id: &str,
        estimate: Cost,
        now_ms: i64,
    ) -> Result<Decision, BudgetUnavailable> {
        let _renewing = lease.renewing.lock().await;
        let ttl_ms = self.reservation_ttl_ms();
        // A renewal made while this request waited may have made room.
        if let Some(decision) =
            lease
                .lock()
                .admit_locally(request_id, estimate, now_ms, ttl_ms, self.link.is_steady())
        {
            self.stats.admitted_locally.fetch_add(1, Ordering::Relaxed);
            return Ok(decision);
        }
        // Requests admitted meanwhile may take the room made; a few tries.
        for _ in 0..3 {
            let grant = self.renew(lease, Some(estimate), now_ms).await?;
            let decided =
                lease
                    .lock()
                    .admit_after(request_id, estimate, &grant, now_ms, now_ms + ttl_ms);
            if let Some(decision) = decided {
                if matches!(decision, Decision::Admitted { .. }) {
                    self.stats
                        .admitted_after_renewal
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Ok(decision);
            }
        }
        Ok(Decision::BudgetExhausted)
    }

    /// Settles this replica's lease on `scope` up: commits its settled
    /// spend and hands back all it holds beyond what is in flight, so Redis
    /// has the whole truth before the budget is read or changed, and what
    /// this replica admits next is decided against the result.
    async fn settle_up(&self, scope: &Scope) -> Result<(), BudgetUnavailable> {
        let Some(lease) = self.existing_lease(scope) else {
            return Ok(());
        };
        let _renewing = tokio::time::timeout(REDIS_DEADLINE, lease.renewing.lock())
            .await
            .map_err(|_| BudgetUnavailable("a renewal of this scope is stuck".into()))?;
        let now_ms = {
            let mut state = lease.lock();
            state.go_idle();
            state.last_now_ms
        };
        self.renew(&lease, None, now_ms).await.map(|_| ())
    }
}

impl ScopeLease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background side of the leases: commits settlements (every
/// [`RENEW_EVERY`] at most, one renewal per scope for all of them), tops up
/// leases running low, keeps used leases renewed and hands back idle ones.
async fn renew_in_background(inner: Weak<Inner>) {
    let Some(mut up) = inner.upgrade().map(|i| i.link.watch()) else {
        return;
    };
    loop {
        let Some(store) = inner.upgrade() else {
            return;
        };
        tokio::select! {
            _ = store.wake.notified() => {}
            changed = up.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        // Only this task holds the store: it was dropped.
        if Arc::strong_count(&store) == 1 {
            return;
        }
        if !*up.borrow_and_update() {
            continue;
        }
        let round = Instant::now();
        store.renew_due().await;
        let applied = store.stats.applied_after_outage.swap(0, Ordering::Relaxed);
        if applied > 0 {
            tracing::info!(
                "{applied} settlements made while the budget store was down are applied"
            );
        }
        drop(store);
        tokio::time::sleep(RENEW_EVERY.saturating_sub(round.elapsed())).await;
    }
}

impl Inner {
    /// One background round: every lease with something to send.
    async fn renew_due(&self) {
        let now = Instant::now();
        let ttl = self.lease_ttl();
        let due: Vec<Arc<ScopeLease>> = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            leases.retain(|_, l| {
                let state = l.lock();
                state.has_work() || now.duration_since(state.last_admit) < FORGET_AFTER
            });
            leases
                .values()
                .filter(|l| {
                    let mut state = l.lock();
                    let idle = now.duration_since(state.last_admit) >= IDLE_AFTER;
                    if idle {
                        state.go_idle();
                    }
                    state.due(now, ttl / 3, idle)
                })
                .cloned()
                .collect()
        };
        let renewals = due.iter().map(|lease| async move {
            // A request renewing this lease itself carries the same work.
            let Ok(_renewing) = lease.renewing.try_lock() else {
                return;
            };
            let now_ms = lease.lock().last_now_ms;
            if let Err(e) = self.renew(lease, None, now_ms).await {
                if !e.is_store_down() {
                    tracing::warn!("cannot renew a budget lease: {e}");
                }
            }
        });
        futures_util::future::join_all(renewals).await;
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
        let inner = &self.inner;
        let lease = inner.lease_of(scope);
        let steady = inner.link.is_steady();
        let local = {
            let mut state = lease.lock();
            let decided = state.admit_locally(
                request_id,
                estimate,
                now_ms,
                inner.reservation_ttl_ms(),
                steady,
            );
            if decided.is_some() && state.running_low() {
                inner.wake.notify_one();
            }
            decided
        };
        if let Some(decision) = local {
            inner.stats.admitted_locally.fetch_add(1, Ordering::Relaxed);
            return Ok(decision);
        }
        if !inner.link.is_up() {
            return Err(BudgetUnavailable(STORE_DOWN.into()));
        }
        match tokio::time::timeout(
            REDIS_DEADLINE,
            inner.reserve_by_renewal(&lease, request_id, estimate, now_ms),
        )
        .await
        {
            Ok(decided) => decided,
            // Not a sign of Redis being away by itself: the time may have
            // gone waiting for another request's renewal of the scope (the
            // breaker hears of Redis' own timeouts from each call).
            Err(_) => Err(BudgetUnavailable(format!(
                "no decision within {REDIS_DEADLINE:?}"
            ))),
        }
    }

    async fn settle(
        &self,
        scope: &Scope,
        request_id: &str,
        actual: Cost,
        now_ms: i64,
    ) -> Result<bool, BudgetUnavailable> {
        let lease = self.inner.lease_of(scope);
        let settled = {
            let mut state = lease.lock();
            if !self.inner.link.is_up() {
                // Committed once Redis is back, and said so then.
                state.failing = true;
            }
            state.settle(request_id, actual, now_ms)
        };
        self.inner.wake.notify_one();
        Ok(settled)
    }

    async fn release(&self, scope: &Scope, request_id: &str) {
        if let Some(lease) = self.inner.existing_lease(scope) {
            lease.lock().release(request_id);
        }
    }

    async fn standing(&self, scope: &Scope, now_ms: i64) -> Result<Standing, BudgetUnavailable> {
        let inner = &self.inner;
        // A read does not need Redis to take this replica's renewal (it
        // may be short of the replicas `replica_acks` asks for): what is
        // not committed yet is added from here.
        if let Err(e) = inner.settle_up(scope).await {
            tracing::debug!("reading a budget without settling its lease up: {e}");
        }
        let mut conn = inner.connection()?;
        let key = |suffix: &str| scope_key(&inner.prefix, scope, suffix);
        let bucket: (Option<f64>, Option<i64>, Option<f64>) = within_deadline(
            &inner.link,
            redis::cmd("HMGET")
                .arg(key("bucket"))
                .arg(&["level", "ts", "out"])
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
            &inner.link,
            redis::cmd("HMGET")
                .arg(key("spend"))
                .arg(&["period", "tokens", "usd", "rtokens", "rusd"])
                .query_async(&mut conn),
        )
        .await?;
        let leases: HashMap<String, String> = within_deadline(
            &inner.link,
            redis::cmd("HGETALL")
                .arg(key("leases"))
                .query_async(&mut conn),
        )
        .await?;
        let (pending, own_in_flight, own_slice) = inner
            .existing_lease(scope)
            .map(|l| l.lock().local_view())
            .unwrap_or_default();
        // Reservations in Redis count whole leases; what is in flight is
        // each replica's last word on it, this one's exactly.
        let mut leased = Cost::default();
        let mut in_flight = own_in_flight;
        for (owner, record) in &leases {
            if owner.starts_with("orphan:") {
                continue;
            }
            let f: Vec<u64> = record.split(':').map(|n| n.parse().unwrap_or(0)).collect();
            let field = |i: usize| f.get(i).copied().unwrap_or(0);
            leased.tokens += field(0);
            leased.usd_micros += field(1);
            if *owner != inner.owner {
                in_flight.tokens += field(2);
                in_flight.usd_micros += field(3);
            }
        }
        let tpm = scope.limits.tokens_per_minute;
        let bucket_tokens = (tpm > 0).then(|| {
            let out = bucket.2.unwrap_or(0.0);
            let level = bucket.0.unwrap_or(tpm as f64 - out);
            let ts = bucket.1.unwrap_or(now_ms);
            let refilled = level + (now_ms - ts).max(0) as f64 * tpm as f64 / 60_000.0;
            (refilled.min(tpm as f64 - out) + own_slice.max(0.0)).max(0.0) as u64
        });
        let same_period = spend.0.as_deref().is_none_or(|p| p == scope.limits.period);
        let committed = |v: Option<u64>| if same_period { v.unwrap_or(0) } else { 0 };
        Ok(Standing {
            bucket_tokens,
            committed_tokens: committed(spend.1).saturating_add(pending.tokens),
            committed_usd_micros: committed(spend.2).saturating_add(pending.usd_micros),
            reserved_tokens: spend
                .3
                .unwrap_or(0)
                .saturating_sub(leased.tokens)
                .saturating_add(in_flight.tokens),
            reserved_usd_micros: spend
                .4
                .unwrap_or(0)
                .saturating_sub(leased.usd_micros)
                .saturating_add(in_flight.usd_micros),
        })
    }

    async fn reset_term(&self, scope: &Scope) -> Result<(), BudgetUnavailable> {
        let inner = &self.inner;
        inner.settle_up(scope).await?;
        let mut conn = inner.connection()?;
        within_deadline(
            &inner.link,
            redis::cmd("HSET")
                .arg(scope_key(&inner.prefix, scope, "spend"))
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
        let inner = &self.inner;
        inner.settle_up(scope).await?;
        let mut conn = inner.connection()?;
        let mut invocation = inner.raise.key(scope_key(&inner.prefix, scope, "spend"));
        invocation
            .arg(&scope.limits.period)
            .arg(ledger.tokens)
            .arg(ledger.usd_micros)
            .arg(since_ms);
        let raised: i64 = within_deadline(&inner.link, invocation.invoke_async(&mut conn)).await?;
        Ok(raised == 1)
    }

    fn lease_stats(&self) -> Option<LeaseStats> {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Some(LeaseStats {
            admitted_locally: get(&s.admitted_locally),
            admitted_after_renewal: get(&s.admitted_after_renewal),
            background: Renewals {
                answered: get(&s.renewals[0][0]),
                failed: get(&s.renewals[0][1]),
            },
            for_request: Renewals {
                answered: get(&s.renewals[1][0]),
                failed: get(&s.renewals[1][1]),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Limits;

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
                    limits: Limits {
                        tokens_per_minute: 1000,
                        budget_tokens: Some(5),
                        budget_usd_micros: None,
                        period: "lifetime".into(),
                    },
                };
                let owner = "0f3c9a1e5b7d4c2a";
                let scripts: [(&str, Vec<String>); 2] = [
                    ("lease", lease_keys(prefix, &scope, owner).to_vec()),
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
}
