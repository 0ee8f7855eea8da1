//! Budgets in this process only: one replica without Redis. The same
//! semantics as Redis-backed budgets, with no lease to take: the whole
//! scope is here.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    unix_ms, BudgetStore, BudgetUnavailable, Cost, Decision, Scope, Standing, SETTLED_TTL_SECS,
};

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

    async fn release(&self, scope: &Scope, request_id: &str) {
        let Ok(mut scopes) = self.lock() else {
            return;
        };
        let Some(s) = scopes.get_mut(&scope.id) else {
            return;
        };
        if let Some(reserved) = s.reservations.remove(request_id) {
            s.reserved_tokens = s.reserved_tokens.saturating_sub(reserved.tokens);
            s.reserved_usd = s.reserved_usd.saturating_sub(reserved.usd_micros);
            let tpm = scope.limits.tokens_per_minute;
            if tpm > 0 {
                s.level = (s.level + reserved.tokens as f64).min(tpm as f64);
            }
        }
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
    use crate::budget::Limits;

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
