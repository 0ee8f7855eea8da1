//! One replica's lease on one scope, kept in this process: the slice of the
//! scope's term budget and of its token bucket the replica took from Redis
//! ahead of need, and the requests it admitted against them. Admitting and
//! settling here touch only this state; [`super::redis`] carries the
//! renewals (`lease.lua`) that move slices and committed spend to and from
//! Redis, in the background or, when a request does not fit, while it waits.
//!
//! The invariant that keeps budgets exact: what this replica has in use (in
//! flight plus settled but not yet committed) never exceeds what Redis
//! holds for it, and a renewal never lets Redis hold less than what may be
//! in use by the time its answer arrives.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{Cost, Decision, Scope};

/// How many requests of the largest recent size a lease keeps room for.
const HEADROOM_REQUESTS: u64 = 8;
/// How many renewal intervals of recent demand a lease keeps room for.
const HEADROOM_INTERVALS: u64 = 4;
/// Settled request ids remembered per scope (a repeat is then a no-op).
const SETTLED_REMEMBERED: usize = 4096;

/// An admitted request's estimate, released unsettled at `expires_ms`.
struct Reservation {
    cost: Cost,
    expires_ms: i64,
}

/// A renewal whose answer is not in yet, or was lost: sent again as it was.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    commit: Cost,
    settlements: usize,
    returned: f64,
}

/// What one renewal asks Redis for (the arguments of `lease.lua`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Renewal {
    pub seq: u64,
    pub now_ms: i64,
    pub commit: Cost,
    pub held: Cost,
    pub need: Cost,
    pub headroom: Cost,
    pub kept: f64,
    pub returned: f64,
    pub bucket_need: u64,
    pub bucket_headroom: u64,
    /// Settlements whose spend `commit` carries.
    pub settlements: usize,
}

/// Redis' answer to a renewal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Grant {
    /// The whole term lease now held (not an increment).
    pub term: Cost,
    /// Bucket tokens added to the slice.
    pub bucket: u64,
    /// The bucket's level left in Redis.
    pub level: f64,
    /// Set when the bucket could not cover the need.
    pub retry_after_ms: Option<u64>,
    /// The term budget could not cover the need.
    pub exhausted: bool,
}

/// The local side of one scope's lease.
pub(super) struct Lease {
    pub scope: Scope,
    granted: Cost,
    in_flight: Cost,
    unflushed: Cost,
    unflushed_settlements: usize,
    slice: f64,
    /// Redis' bucket level at the last renewal, and the clock it was read at.
    known_level: f64,
    known_ms: i64,
    /// The last renewal left the lease short (the scope is nearly spent):
    /// topping it up waits for the next round instead of every one.
    short: bool,
    reservations: HashMap<String, Reservation>,
    settled: HashMap<String, ()>,
    settled_order: VecDeque<String>,
    seq: u64,
    sent: Option<Sent>,
    /// Whether settlements wait for Redis: the last renewal failed, or they
    /// were made while Redis was down.
    pub failing: bool,
    valid_until: Option<Instant>,
    /// The clock of the latest request seen (renewals in the background use
    /// it, so the bucket refills on the requests' own clock).
    pub last_now_ms: i64,
    pub last_admit: Instant,
    pub renewed_at: Instant,
    peak: Cost,
    peak_window: Cost,
    recent: Cost,
    window: Cost,
}

impl Lease {
    pub fn new(scope: Scope) -> Self {
        let now = Instant::now();
        Self {
            scope,
            granted: Cost::default(),
            in_flight: Cost::default(),
            unflushed: Cost::default(),
            unflushed_settlements: 0,
            slice: 0.0,
            known_level: 0.0,
            known_ms: 0,
            short: false,
            reservations: HashMap::new(),
            settled: HashMap::new(),
            settled_order: VecDeque::new(),
            seq: 0,
            sent: None,
            failing: false,
            valid_until: None,
            last_now_ms: 0,
            last_admit: now,
            renewed_at: now,
            peak: Cost::default(),
            peak_window: Cost::default(),
            recent: Cost::default(),
            window: Cost::default(),
        }
    }

    fn term_limited(&self) -> (bool, bool) {
        let l = &self.scope.limits;
        (l.budget_tokens.is_some(), l.budget_usd_micros.is_some())
    }

    fn in_use(&self) -> Cost {
        add(self.in_flight, self.unflushed)
    }

    /// Releases reservations whose request never settled (a leak guard: a
    /// request runs far shorter than the reservation TTL).
    fn expire(&mut self, now_ms: i64) {
        let expired: Vec<String> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(r) = self.reservations.remove(&id) {
                self.in_flight = sub(self.in_flight, r.cost);
                if self.scope.limits.tokens_per_minute > 0 {
                    self.slice += r.cost.tokens as f64;
                }
            }
        }
    }

    /// Admits `estimate` against the lease without asking Redis, when it
    /// fits; `None` when Redis must be asked (or the lease is not usable).
    pub fn admit_locally(
        &mut self,
        request_id: &str,
        estimate: Cost,
        now_ms: i64,
        ttl_ms: i64,
        usable: bool,
    ) -> Option<Decision> {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        if self.reservations.contains_key(request_id) {
            return Some(Decision::Admitted {
                remaining_tokens: None,
            });
        }
        let tpm = self.scope.limits.tokens_per_minute;
        if tpm > 0 && estimate.tokens > tpm {
            return Some(Decision::TooLarge);
        }
        if !self.reservations.is_empty() {
            self.expire(now_ms);
        }
        if !usable || self.valid_until.is_none_or(|t| Instant::now() >= t) {
            return None;
        }
        let (tokens_limited, usd_limited) = self.term_limited();
        let wanted = add(self.in_use(), estimate);
        if (tokens_limited && wanted.tokens > self.granted.tokens)
            || (usd_limited && wanted.usd_micros > self.granted.usd_micros)
            || (tpm > 0 && (estimate.tokens as f64) > self.slice)
        {
            return None;
        }
        Some(self.take(request_id, estimate, now_ms, now_ms + ttl_ms))
    }

    fn take(&mut self, request_id: &str, estimate: Cost, now_ms: i64, expires_ms: i64) -> Decision {
        self.in_flight = add(self.in_flight, estimate);
        self.peak_window = max(self.peak_window, estimate);
        self.window = add(self.window, estimate);
        self.last_admit = Instant::now();
        self.reservations.insert(
            request_id.to_string(),
            Reservation {
                cost: estimate,
                expires_ms,
            },
        );
        if self.scope.limits.tokens_per_minute == 0 {
            return Decision::Admitted {
                remaining_tokens: None,
            };
        }
        self.slice -= estimate.tokens as f64;
        Decision::Admitted {
            remaining_tokens: Some(self.remaining_tokens(estimate.tokens, now_ms)),
        }
    }

    /// The bucket's tokens after admitting `estimate`, as this replica knows
    /// them: Redis' level at the last renewal refilled since, and its own
    /// slice (a full bucket less the estimate at most).
    fn remaining_tokens(&self, estimate: u64, now_ms: i64) -> u64 {
        let tpm = self.scope.limits.tokens_per_minute as f64;
        let refill = (now_ms - self.known_ms).max(0) as f64 * tpm / 60_000.0;
        (self.known_level + refill + self.slice)
            .min(tpm - estimate as f64)
            .max(0.0) as u64
    }

    /// Whether the lease is low enough that a renewal should not wait for
    /// the next round.
    pub fn running_low(&self) -> bool {
        let (tokens_limited, usd_limited) = self.term_limited();
        let headroom = self.headroom();
        let free = sub(self.granted, self.in_use());
        (tokens_limited && free.tokens < headroom.tokens / 2)
            || (usd_limited && free.usd_micros < headroom.usd_micros / 2)
            || (self.scope.limits.tokens_per_minute > 0
                && self.slice < (headroom.tokens / 2) as f64)
    }

    /// Settles a request: its estimate leaves the lease, its actual cost
    /// waits for the next renewal to be committed. False when `request_id`
    /// was settled before (nothing changes).
    pub fn settle(&mut self, request_id: &str, actual: Cost, now_ms: i64) -> bool {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        if self.settled.contains_key(request_id) {
            return false;
        }
        let reserved = self
            .reservations
            .remove(request_id)
            .map_or(Cost::default(), |r| r.cost);
        self.in_flight = sub(self.in_flight, reserved);
        self.unflushed = add(self.unflushed, actual);
        self.unflushed_settlements += 1;
        if self.scope.limits.tokens_per_minute > 0 {
            self.slice += reserved.tokens as f64 - actual.tokens as f64;
        }
        if self.settled_order.len() >= SETTLED_REMEMBERED {
            if let Some(old) = self.settled_order.pop_front() {
                self.settled.remove(&old);
            }
        }
        self.settled.insert(request_id.to_string(), ());
        self.settled_order.push_back(request_id.to_string());
        true
    }

    /// Takes back a reservation whose request was refused by another scope
    /// (nothing is charged, nothing remembered).
    pub fn release(&mut self, request_id: &str) {
        if let Some(r) = self.reservations.remove(request_id) {
            self.in_flight = sub(self.in_flight, r.cost);
            if self.scope.limits.tokens_per_minute > 0 {
                self.slice += r.cost.tokens as f64;
            }
        }
    }

    /// Room for what the scope was using lately: a few of its largest
    /// requests, or a few renewal intervals of its traffic, whichever is more.
    fn headroom(&self) -> Cost {
        let by_size = mul(max(self.peak, self.peak_window), HEADROOM_REQUESTS);
        let by_rate = mul(max(self.recent, self.window), HEADROOM_INTERVALS);
        max(by_size, by_rate)
    }

    /// Whether Redis holds anything for this lease, or has something to
    /// receive from it.
    pub fn has_work(&self) -> bool {
        self.sent.is_some()
            || self.unflushed_settlements > 0
            || self.granted != Cost::default()
            || self.slice != 0.0
            || self.in_flight != Cost::default()
    }

    /// Whether a background renewal should be sent this round: spend to
    /// commit, a lease running low, one due for its heartbeat, or an idle
    /// one with room to hand back.
    pub fn due(&self, now: Instant, heartbeat: std::time::Duration, idle: bool) -> bool {
        let low_again = !self.short || now.duration_since(self.renewed_at) >= heartbeat / 100;
        self.sent.is_some()
            || self.unflushed_settlements > 0
            || (self.running_low() && low_again)
            || (self.has_work() && now.duration_since(self.renewed_at) >= heartbeat)
            || (idle && (self.granted != self.in_use() || self.slice > 0.0))
    }

    /// Forgets recent demand, so an idle lease shrinks to what it has in flight.
    pub fn go_idle(&mut self) {
        self.peak = Cost::default();
        self.peak_window = Cost::default();
        self.recent = Cost::default();
        self.window = Cost::default();
    }

    /// The renewal to send now; `need` is a waiting request's estimate (the
    /// bucket slice is then handed back whole and the need asked for).
    /// Until its answer, the lease admits only within what Redis is sure to
    /// keep for it.
    pub fn plan(&mut self, need: Option<Cost>, now_ms: i64) -> Renewal {
        let headroom = self.headroom();
        self.peak = max(self.peak_window, half(self.peak));
        self.recent = max(self.window, half(self.recent));
        self.peak_window = Cost::default();
        self.window = Cost::default();
        let sent = match self.sent {
            Some(sent) => sent,
            None => {
                self.seq += 1;
                let commit = std::mem::take(&mut self.unflushed);
                let settlements = std::mem::take(&mut self.unflushed_settlements);
                self.granted = sub(self.granted, commit);
                let tpm = self.scope.limits.tokens_per_minute;
                let keep = if need.is_some() || tpm == 0 {
                    0.0
                } else {
                    self.slice.clamp(0.0, headroom.tokens as f64)
                };
                let returned = self.slice - keep;
                self.slice = keep;
                let sent = Sent {
                    seq: self.seq,
                    commit,
                    settlements,
                    returned,
                };
                self.sent = Some(sent);
                sent
            }
        };
        let held = self.in_use();
        self.granted = min(self.granted, add(held, headroom));
        let need = need.unwrap_or_default();
        Renewal {
            seq: sent.seq,
            now_ms: self.last_now_ms.max(now_ms),
            commit: sent.commit,
            held,
            need,
            headroom,
            kept: self.slice.max(0.0),
            returned: sent.returned,
            bucket_need: need.tokens,
            bucket_headroom: headroom.tokens.saturating_sub(self.slice.max(0.0) as u64),
            settlements: sent.settlements,
        }
    }

    /// Takes in Redis' answer to `renewal`; the lease is good for
    /// `valid_for` from when it was sent. Returns how many settlements it
    /// committed.
    pub fn renewed(
        &mut self,
        renewal: &Renewal,
        grant: Grant,
        sent_at: Instant,
        valid_for: std::time::Duration,
    ) -> usize {
        self.sent = None;
        self.failing = false;
        self.granted = grant.term;
        self.slice += grant.bucket as f64;
        self.known_level = grant.level;
        self.known_ms = renewal.now_ms;
        self.valid_until = Some(sent_at + valid_for);
        self.renewed_at = sent_at;
        self.short = self.running_low();
        renewal.settlements
    }

    /// The renewal got no answer: it is sent again as it was, and the
    /// lease admits only within what it held before.
    pub fn renewal_failed(&mut self) {
        self.failing = true;
    }

    /// Admits a waiting request after a renewal made room for it, or says
    /// why it does not fit.
    pub fn admit_after(
        &mut self,
        request_id: &str,
        estimate: Cost,
        grant: &Grant,
        now_ms: i64,
        expires_ms: i64,
    ) -> Option<Decision> {
        if let Some(retry_after_ms) = grant.retry_after_ms {
            return Some(Decision::RateLimited { retry_after_ms });
        }
        if grant.exhausted {
            return Some(Decision::BudgetExhausted);
        }
        let (tokens_limited, usd_limited) = self.term_limited();
        let wanted = add(self.in_use(), estimate);
        let fits = !(tokens_limited && wanted.tokens > self.granted.tokens
            || usd_limited && wanted.usd_micros > self.granted.usd_micros
            || self.scope.limits.tokens_per_minute > 0 && (estimate.tokens as f64) > self.slice);
        fits.then(|| self.take(request_id, estimate, now_ms, expires_ms))
    }

    /// What this replica adds to the scope's standing in Redis: settled
    /// spend not yet committed, and its own in-flight estimates exactly.
    pub fn local_view(&self) -> (Cost, Cost, f64) {
        let pending = add(
            self.unflushed,
            self.sent.map_or(Cost::default(), |s| s.commit),
        );
        (pending, self.in_flight, self.slice)
    }
}

fn add(a: Cost, b: Cost) -> Cost {
    Cost {
        tokens: a.tokens.saturating_add(b.tokens),
        usd_micros: a.usd_micros.saturating_add(b.usd_micros),
    }
}

fn sub(a: Cost, b: Cost) -> Cost {
    Cost {
        tokens: a.tokens.saturating_sub(b.tokens),
        usd_micros: a.usd_micros.saturating_sub(b.usd_micros),
    }
}

fn max(a: Cost, b: Cost) -> Cost {
    Cost {
        tokens: a.tokens.max(b.tokens),
        usd_micros: a.usd_micros.max(b.usd_micros),
    }
}

fn min(a: Cost, b: Cost) -> Cost {
    Cost {
        tokens: a.tokens.min(b.tokens),
        usd_micros: a.usd_micros.min(b.usd_micros),
    }
}

fn mul(a: Cost, n: u64) -> Cost {
    Cost {
        tokens: a.tokens.saturating_mul(n),
        usd_micros: a.usd_micros.saturating_mul(n),
    }
}

fn half(a: Cost) -> Cost {
    Cost {
        tokens: a.tokens / 2,
        usd_micros: a.usd_micros / 2,
    }
}
