//! Per-client request rate limits of a route (`routes[].rate_limit`), the
//! way HAProxy users limit with a stick table's `http_req_rate`, counted in
//! Pingora's `pingora-limits` sketches: a fixed amount of memory however
//! many clients arrive. A sketch never undercounts; clients whose keys
//! collide share a count, so under extreme cardinality a client may be
//! limited slightly early, never late.
//!
//! A client may make `requests_per_second + burst` requests in any second
//! and `10 × requests_per_second + burst` in any ten seconds: short bursts
//! above the rate, the rate itself over time. Each window is estimated by
//! Cloudflare's sliding approximation (previous window weighted by what is
//! left of it, plus the current one).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use pingora_limits::rate::{Rate, RateComponents};

use crate::config::{LimitKey, RateLimitConfig};

/// Cells of each sketch row; four rows. 2048 × 4 × 8 bytes per window and
/// slot: about 256 KiB per limited route, whatever the number of clients.
const SLOTS: usize = 2048;
const HASHES: usize = 4;
const LONG_WINDOW: u64 = 10;

/// A route's limit with its live counts. Rebuilt, and so reset, by a
/// configuration reload.
pub struct RateLimiter {
    config: RateLimitConfig,
    second: Rate,
    long: Rate,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a refused request is told: try again in this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let window =
            |secs| Rate::new_with_estimator_config(Duration::from_secs(secs), HASHES, SLOTS);
        Self {
            config,
            second: window(1),
            long: window(LONG_WINDOW),
        }
    }

    /// Says whether a request from `client` is within the limit, and
    /// counts it if it is. Only admitted requests count, so a client that
    /// sends faster than its rate is still served at its rate.
    pub fn check(&self, req: &RequestHeader, client: Option<IpAddr>) -> Result<(), RetryAfter> {
        let key = self.key_of(req, client);
        let rate = u64::from(self.config.requests_per_second);
        let burst = u64::from(self.config.burst);
        if estimate(&self.second, key) + 1.0 > (rate + burst) as f64 {
            return Err(RetryAfter(1));
        }
        let in_long = estimate(&self.long, key);
        let long_limit = (LONG_WINDOW * rate + burst) as f64;
        if in_long + 1.0 > long_limit {
            // The long window has room again once enough of it has passed.
            let excess = in_long + 1.0 - long_limit;
            return Err(RetryAfter((excess / rate as f64).ceil().max(1.0) as u64));
        }
        self.second.observe(&key, 1);
        self.long.observe(&key, 1);
        Ok(())
    }

    /// The hash of what tells one client from another. Requests without
    /// the header or credential the limit is keyed by share one count.
    fn key_of(&self, req: &RequestHeader, client: Option<IpAddr>) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match &self.config.by {
            LimitKey::ClientIp => client.hash(&mut hasher),
            LimitKey::Header(name) => value_of(req, name).hash(&mut hasher),
            LimitKey::Key => value_of(req, &header::AUTHORIZATION)
                .or_else(|| value_of(req, &HeaderName::from_static("x-api-key")))
                .hash(&mut hasher),
        }
        hasher.finish()
    }
}

fn value_of<'a>(req: &'a RequestHeader, name: &HeaderName) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

/// Requests of `key` in the last window, estimated.
fn estimate(rate: &Rate, key: u64) -> f64 {
    rate.rate_with(&key, |c: RateComponents| {
        c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, by: LimitKey) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            by,
            requests_per_second: rate,
            burst,
        })
    }

    fn request(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in headers {
            req.insert_header(*name, *value).expect("header");
        }
        req
    }

    #[test]
    fn a_client_gets_the_rate_plus_the_burst_and_then_a_retry_after() {
        let l = limiter(5, 3, LimitKey::ClientIp);
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        let req = request(&[]);
        let allowed = (0..20).filter(|_| l.check(&req, ip).is_ok()).count();
        assert_eq!(allowed, 8);
        assert_eq!(l.check(&req, ip), Err(RetryAfter(1)));
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(
            l.check(&req, other).is_ok(),
            "another client has its own count"
        );
    }

    #[test]
    fn header_and_key_limits_count_by_their_value() {
        let by_header = limiter(1, 0, LimitKey::Header(HeaderName::from_static("x-tenant")));
        let a = request(&[("x-tenant", "a")]);
        let b = request(&[("x-tenant", "b")]);
        assert!(by_header.check(&a, None).is_ok());
        assert!(by_header.check(&a, None).is_err());
        assert!(by_header.check(&b, None).is_ok());

        let by_key = limiter(1, 0, LimitKey::Key);
        let bearer = request(&[("authorization", "Bearer k1")]);
        let api_key = request(&[("x-api-key", "k2")]);
        assert!(by_key.check(&bearer, None).is_ok());
        assert!(by_key.check(&bearer, None).is_err());
        assert!(by_key.check(&api_key, None).is_ok());
    }
}
