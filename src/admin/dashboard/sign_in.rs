//! Failed sign-ins are rate limited: per client address, and across all of
//! them, so guessing `DASHBOARD_PASSWORD` is slow from one host or many.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures one address may make per window before it must wait.
const PER_ADDRESS: u32 = 5;
/// Failures all addresses together may make per window.
const OVERALL: u32 = 50;
/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// Counts failed sign-ins per window.
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    by_address: HashMap<IpAddr, (Instant, u32)>,
    overall: Option<(Instant, u32)>,
}

impl SignInLimiter {
    /// How long `address` must wait before it may try again; `None` when
    /// it may try now.
    pub fn wait(&self, address: Option<IpAddr>) -> Option<Duration> {
        let now = Instant::now();
        let mut f = self.failures.lock().ok()?;
        f.by_address
            .retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        let blocked = |(since, n): (Instant, u32), limit: u32| {
            (n >= limit).then(|| WINDOW.saturating_sub(now.duration_since(since)))
        };
        let overall = f
            .overall
            .filter(|(since, _)| now.duration_since(*since) < WINDOW)
            .and_then(|w| blocked(w, OVERALL));
        let own = address
            .and_then(|a| f.by_address.get(&a).copied())
            .and_then(|w| blocked(w, PER_ADDRESS));
        own.max(overall)
    }

    /// Counts a failed sign-in from `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        let bump = |w: &mut (Instant, u32)| {
            if now.duration_since(w.0) >= WINDOW {
                *w = (now, 0);
            }
            w.1 += 1;
        };
        bump(f.overall.get_or_insert((now, 0)));
        if let Some(a) = address {
            bump(f.by_address.entry(a).or_insert((now, 0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_waits_and_another_does_not() {
        let limiter = SignInLimiter::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..PER_ADDRESS {
            assert_eq!(limiter.wait(a), None);
            limiter.failed(a);
        }
        let wait = limiter.wait(a).expect("blocked");
        assert!(wait > Duration::from_secs(50) && wait <= WINDOW);
        assert_eq!(limiter.wait(b), None);
    }
}
