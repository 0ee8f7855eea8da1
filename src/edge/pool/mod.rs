//! Pools of upstream servers: which servers are in rotation, how many requests
//! each is serving, and which one the next request goes to.
//!
//! Besides its health, each server has an operator's setting, changed at
//! run time through the admin API as HAProxy's `set server … state` and
//! `set server … weight` change it: a state (`ready`, `drain`, `maint`)
//! and a current weight. Both sit in one atomic word, so selection reads
//! them with one load per server it looks at; the weighted orders (the
//! round-robin schedule, the consistent-hash ring) are rebuilt off the
//! request path when a weight changes, and a pool whose weights are those
//! of its configuration never looks at the rebuilt ones.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::config::{Algorithm, HashKey, PoolConfig, ServerConfig};
use crate::metrics::{PoolMetrics, FAMILIES};

mod rotation;
mod setting;

use rotation::{Ring, Rotation};
pub use setting::{AdminState, Setting, MAX_WEIGHT};

/// How long a server that refused a connection stays out of rotation when
/// the pool has no active health check to bring it back.
const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on the monotonic clock since the first call: ejection
/// deadlines must not move when the wall clock is set.
fn monotonic_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One upstream server and its live state.
#[derive(Debug)]
pub struct Server {
    pub config: ServerConfig,
    /// Cleared by failing health checks (or a refused connection when the
    /// pool is checked), set again after `rise` passing checks; cleared
    /// while the server is in `maint`.
    healthy: AtomicBool,
    /// Without active checks, a refused connection ejects the server until
    /// this instant (milliseconds since process start).
    ejected_until_ms: AtomicU64,
    /// The operator's [`Setting`], packed.
    setting: AtomicU32,
    in_flight: AtomicUsize,
    peer: HttpPeer,
    healthy_gauge: IntGauge,
    /// `obleth_upstream_server_state` for each of [`AdminState::ALL`].
    state_gauges: [IntGauge; 3],
    weight_gauge: IntGauge,
}

impl Server {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= monotonic_ms()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.healthy_gauge.set(i64::from(healthy));
    }

    /// The operator's state and current weight.
    pub fn setting(&self) -> Setting {
        Setting::unpack(self.setting.load(Ordering::Relaxed))
    }

    fn store_setting(&self, setting: Setting) {
        self.setting.store(setting.pack(), Ordering::Relaxed);
        for (state, gauge) in AdminState::ALL.iter().zip(&self.state_gauges) {
            gauge.set(i64::from(*state == setting.state));
        }
        self.weight_gauge.set(i64::from(setting.weight));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.config
            .max_connections
            .is_none_or(|max| self.in_flight() < max)
    }

    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }
}

/// The bytes consistent hashing places this request by.
pub fn balance_key(req: &RequestHeader, client: Option<IpAddr>, key: &HashKey) -> Vec<u8> {
    match key {
        HashKey::ClientIp => client
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
        HashKey::Header(name) => req
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashKey::Cookie(name) => req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// A pool ready to serve: servers, selection state and metric handles.
pub struct Pool {
    pub config: PoolConfig,
    pub servers: Vec<Server>,
    /// The orders for the configured weights.
    configured: Rotation,
    /// Set while some server's current weight differs from its configured
    /// one; only then does selection read `reweighted`.
    is_reweighted: AtomicBool,
    reweighted: ArcSwapOption<Rotation>,
    /// Serializes setting changes, so the rebuilt orders follow the last.
    changes: Mutex<()>,
    cursor: AtomicUsize,
    pub metrics: PoolMetrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.config.name)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// The pools requests are routed to right now, republished on every
/// reload: what health checks and the admin API follow.
pub type LivePools = tokio::sync::watch::Receiver<Arc<[Arc<Pool>]>>;

/// A request's claim on a server; the server's in-flight count drops with it.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl InFlight {
    pub fn server(&self) -> &Server {
        &self.pool.servers[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.servers[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Builds a pool. Servers that also stood in `previous` (same address)
    /// keep their health state, so a reload does not send traffic to a
    /// server known to be down, and their operator's state; they keep
    /// their current weight too unless the configuration changed their
    /// weight, which then applies.
    pub fn new(config: PoolConfig, previous: Option<&Pool>) -> Self {
        let servers: Vec<Server> = config
            .servers
            .iter()
            .map(|s| {
                let old =
                    previous.and_then(|p| p.servers.iter().find(|o| o.config.address == s.address));
                let healthy = old.is_none_or(|o| o.healthy.load(Ordering::Relaxed));
                let setting = match old {
                    Some(o) if o.config.weight == s.weight => o.setting(),
                    Some(o) => Setting {
                        weight: s.weight,
                        ..o.setting()
                    },
                    None => Setting {
                        state: AdminState::Ready,
                        weight: s.weight,
                    },
                };
                let labels = [config.name.as_str(), s.name.as_str()];
                let gauge = FAMILIES.server_healthy.with_label_values(&labels);
                gauge.set(i64::from(healthy));
                let server = Server {
                    peer: build_peer(&config, s),
                    config: s.clone(),
                    healthy: AtomicBool::new(healthy),
                    ejected_until_ms: AtomicU64::new(
                        old.map_or(0, |o| o.ejected_until_ms.load(Ordering::Relaxed)),
                    ),
                    setting: AtomicU32::new(setting.pack()),
                    in_flight: AtomicUsize::new(0),
                    healthy_gauge: gauge,
                    state_gauges: AdminState::ALL.map(|state| {
                        FAMILIES.server_state.with_label_values(&[
                            labels[0],
                            labels[1],
                            state.as_str(),
                        ])
                    }),
                    weight_gauge: FAMILIES.server_weight.with_label_values(&labels),
                };
                server.store_setting(setting);
                server
            })
            .collect();
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        let pool = Self {
            configured: Rotation::new(&config, &weights),
            is_reweighted: AtomicBool::new(false),
            reweighted: ArcSwapOption::empty(),
            changes: Mutex::new(()),
            metrics: PoolMetrics::new(&config.name),
            cursor: AtomicUsize::new(0),
            servers,
            config,
        };
        pool.reweigh();
        pool
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The server `name` stands for: its address as written in the
    /// configuration, or the address it resolved to when that names one
    /// server only.
    pub fn find_server(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.servers.iter().position(|s| s.config.name == name) {
            return Some(i);
        }
        let mut resolved = self
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.config.address.to_string() == name)
            .map(|(i, _)| i);
        match (resolved.next(), resolved.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
    }

    /// Gives server `index` the operator's `setting`; returns the one it
    /// replaces. A weight change rebuilds the weighted orders at once;
    /// `maint` takes the server out of health (it counts as down, and in
    /// a checked pool it comes back after `rise` passing checks once it
    /// leaves `maint`; in a pool without checks, at once).
    pub fn apply(&self, index: usize, setting: Setting) -> Setting {
        let _serial = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let server = &self.servers[index];
        let setting = Setting {
            weight: setting.weight.min(MAX_WEIGHT),
            ..setting
        };
        let before = server.setting();
        server.store_setting(setting);
        match (before.state, setting.state) {
            (AdminState::Maint, AdminState::Maint) => {}
            (_, AdminState::Maint) => server.set_healthy(false),
            (AdminState::Maint, _) if self.config.health_check.is_none() => {
                server.set_healthy(true)
            }
            _ => {}
        }
        if before.weight != setting.weight {
            self.reweigh();
        }
        before
    }

    /// Rebuilds the weighted orders from the current weights, or drops
    /// the rebuilt ones when the weights are the configured ones again.
    fn reweigh(&self) {
        let weights: Vec<u32> = self.servers.iter().map(|s| s.setting().weight).collect();
        let configured = self
            .servers
            .iter()
            .zip(&weights)
            .all(|(s, &w)| s.config.weight == w);
        if configured {
            self.is_reweighted.store(false, Ordering::Release);
            self.reweighted.store(None);
        } else {
            self.reweighted
                .store(Some(Arc::new(Rotation::new(&self.config, &weights))));
            self.is_reweighted.store(true, Ordering::Release);
        }
    }

    /// Picks a server for the next attempt, skipping servers out of rotation
    /// (unhealthy, ejected, drained, in maintenance or at weight 0), at
    /// their connection limit, or already tried by this request.
    /// `hash_key` is used by consistent hashing only.
    pub fn select(self: &Arc<Self>, tried: &[usize], hash_key: &[u8]) -> Option<InFlight> {
        // The server's current weight when it may take the request.
        let eligible = |i: usize| -> Option<u32> {
            let s = &self.servers[i];
            if tried.contains(&i) {
                return None;
            }
            let setting = s.setting();
            (setting.takes_new_requests() && s.is_healthy() && s.has_room())
                .then_some(setting.weight)
        };
        let reweighted;
        let rotation = if self.is_reweighted.load(Ordering::Acquire) {
            reweighted = self.reweighted.load();
            reweighted.as_deref().unwrap_or(&self.configured)
        } else {
            &self.configured
        };
        let index = match &self.config.algorithm {
            Algorithm::RoundRobin => {
                let schedule = &rotation.schedule;
                let n = schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| schedule[(start + k) % n])
                    .find(|&i| eligible(i).is_some())
            }
            Algorithm::Random => {
                let candidates: Vec<(usize, u64)> = (0..self.servers.len())
                    .filter_map(|i| eligible(i).map(|w| (i, u64::from(w))))
                    .collect();
                let total: u64 = candidates.iter().map(|&(_, w)| w).sum();
                let mut pick = if total == 0 {
                    0
                } else {
                    rand::random::<u64>() % total
                };
                candidates.into_iter().find_map(|(i, w)| {
                    if pick < w {
                        Some(i)
                    } else {
                        pick -= w;
                        None
                    }
                })
            }
            Algorithm::LeastInFlight => {
                let n = self.servers.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                // Lowest in-flight per unit of weight; the rotating start
                // spreads ties.
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter_map(|i| eligible(i).map(|w| (i, w)))
                    .min_by_key(|&(i, w)| {
                        (self.servers[i].in_flight() as u64 + 1) * 1_000_000 / u64::from(w)
                    })
                    .map(|(i, _)| i)
            }
            Algorithm::ConsistentHash(_) => rotation
                .ring
                .as_ref()
                .and_then(|ring| self.on_ring(ring, hash_key, |i| eligible(i).is_some())),
        }?;
        self.servers[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            pool: Arc::clone(self),
            index,
        })
    }

    /// The first server at or after `hash_key`'s point on the ring that
    /// may take the request: the key's own server unless it cannot, then
    /// the next ones in ring order, each looked at once.
    fn on_ring(
        &self,
        ring: &Ring,
        hash_key: &[u8],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let index = |addr: &std::net::SocketAddr| {
            self.servers.iter().position(|s| s.config.address == *addr)
        };
        let mut points = ring.continuum.node_iter(hash_key).take(ring.points);
        let first = index(points.next()?)?;
        if eligible(first) {
            return Some(first);
        }
        let mut seen = vec![false; self.servers.len()];
        seen[first] = true;
        let mut unseen = ring.servers.saturating_sub(1);
        for addr in points {
            if unseen == 0 {
                break;
            }
            let Some(i) = index(addr) else { continue };
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            if eligible(i) {
                return Some(i);
            }
            unseen -= 1;
        }
        None
    }

    /// A refused or timed-out connection: take the server out of rotation.
    /// With active checks it returns after `rise` passing checks; without,
    /// after a cool-down.
    pub fn mark_connect_failure(&self, index: usize) {
        let server = &self.servers[index];
        if self.config.health_check.is_some() {
            server.set_healthy(false);
        } else {
            server.ejected_until_ms.store(
                monotonic_ms() + PASSIVE_COOLDOWN.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        tracing::warn!(pool = %self.name(), server = %server.config.name, "connect failed; server ejected");
    }
}

fn build_peer(pool: &PoolConfig, server: &ServerConfig) -> HttpPeer {
    let (tls, sni) = match &pool.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(server.address, tls, sni);
    let t = &pool.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.read);
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle_keepalive);
    if let Some(tls) = &pool.tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HashKey, Timeouts};
    use std::net::SocketAddr;

    fn pool(algorithm: Algorithm, weights: &[u32]) -> Arc<Pool> {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| ServerConfig {
                name: format!("127.0.0.1:{}", 10000 + i),
                address: SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16)),
                weight: *w,
                max_connections: None,
            })
            .collect();
        Arc::new(Pool::new(
            PoolConfig {
                name: format!("test-{algorithm:?}-{weights:?}"),
                algorithm,
                servers,
                tls: None,
                health_check: None,
                timeouts: Timeouts {
                    connect: Duration::from_secs(1),
                    read: Duration::from_secs(1),
                    write: Duration::from_secs(1),
                    total: None,
                    idle_keepalive: Duration::from_secs(1),
                },
                retries: 1,
                retry_non_idempotent: false,
                host_header: None,
            },
            None,
        ))
    }

    fn counts(pool: &Arc<Pool>, n: usize, key: impl Fn(usize) -> Vec<u8>) -> Vec<usize> {
        let mut counts = vec![0; pool.servers.len()];
        for i in 0..n {
            let guard = pool.select(&[], &key(i)).expect("a server");
            counts[guard.index()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_and_interleaves() {
        let p = pool(Algorithm::RoundRobin, &[3, 1]);
        assert_eq!(counts(&p, 400, |_| vec![]), vec![300, 100]);
    }

    #[test]
    fn random_roughly_follows_weights() {
        let p = pool(Algorithm::Random, &[1, 3]);
        let c = counts(&p, 8000, |_| vec![]);
        assert!((1600..2400).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_in_flight_prefers_idle_servers() {
        let p = pool(Algorithm::LeastInFlight, &[1, 1, 1]);
        let held: Vec<InFlight> = (0..3)
            .map(|_| p.select(&[], &[]).expect("server"))
            .collect();
        let mut used: Vec<usize> = held.iter().map(InFlight::index).collect();
        used.sort();
        assert_eq!(
            used,
            vec![0, 1, 2],
            "each server gets one before any gets two"
        );
        drop(held);
        assert!(p.servers.iter().all(|s| s.in_flight() == 0));
    }

    #[test]
    fn consistent_hash_is_sticky_and_skips_ejected_servers() {
        let p = pool(Algorithm::ConsistentHash(HashKey::ClientIp), &[1, 1, 1]);
        let first = p.select(&[], b"user-1").expect("server").index();
        for _ in 0..10 {
            assert_eq!(p.select(&[], b"user-1").expect("server").index(), first);
        }
        p.servers[first].set_healthy(false);
        let moved = p.select(&[], b"user-1").expect("server").index();
        assert_ne!(moved, first);
        let spread = counts(&p, 3000, |i| format!("user-{i}").into_bytes());
        assert_eq!(spread[first], 0);
    }

    #[test]
    fn tried_unhealthy_and_full_servers_are_skipped() {
        let mut p = pool(Algorithm::RoundRobin, &[1, 1]);
        Arc::get_mut(&mut p).expect("unique").servers[1]
            .config
            .max_connections = Some(1);
        let _hold = loop {
            let g = p.select(&[], &[]).expect("server");
            if g.index() == 1 {
                break g;
            }
        };
        for _ in 0..4 {
            assert_eq!(p.select(&[], &[]).expect("server").index(), 0);
        }
        assert!(p.select(&[0], &[]).is_none(), "0 tried, 1 full");
        p.servers[0].set_healthy(false);
        assert!(p.select(&[], &[]).is_none());
    }

    #[test]
    fn connect_failure_without_checks_ejects_for_a_cooldown() {
        let p = pool(Algorithm::RoundRobin, &[1, 1]);
        p.mark_connect_failure(0);
        assert!(!p.servers[0].is_healthy());
        assert_eq!(counts(&p, 10, |_| vec![]), vec![0, 10]);
    }

    fn set(p: &Pool, index: usize, state: AdminState, weight: u32) -> Setting {
        p.apply(index, Setting { state, weight })
    }

    fn users(i: usize) -> Vec<u8> {
        format!("user-{i}").into_bytes()
    }

    const ALGORITHMS: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::LeastInFlight,
        Algorithm::Random,
        Algorithm::ConsistentHash(HashKey::ClientIp),
    ];

    #[test]
    fn settings_pack_into_one_word_and_back() {
        for state in AdminState::ALL {
            for weight in [0, 1, 7, MAX_WEIGHT] {
                let s = Setting { state, weight };
                assert_eq!(Setting::unpack(s.pack()), s);
            }
        }
    }

    #[test]
    fn every_algorithm_skips_drained_and_maintained_servers_until_ready() {
        for algorithm in ALGORITHMS {
            let p = pool(algorithm.clone(), &[1, 1, 1]);
            set(&p, 1, AdminState::Drain, 1);
            set(&p, 2, AdminState::Maint, 1);
            let c = counts(&p, 300, users);
            assert_eq!(c, vec![300, 0, 0], "{algorithm:?}");
            set(&p, 1, AdminState::Ready, 1);
            set(&p, 2, AdminState::Ready, 1);
            let c = counts(&p, 3000, users);
            assert!(c.iter().all(|&n| n > 300), "{algorithm:?}: {c:?}");
            set(&p, 0, AdminState::Drain, 1);
            set(&p, 1, AdminState::Drain, 1);
            set(&p, 2, AdminState::Drain, 1);
            assert!(p.select(&[], b"user-1").is_none(), "{algorithm:?}");
        }
    }

    #[test]
    fn a_drained_server_keeps_its_requests_in_flight() {
        let p = pool(Algorithm::LeastInFlight, &[1, 1]);
        let held = p.select(&[], &[]).expect("server");
        let busy = held.index();
        set(&p, busy, AdminState::Drain, 1);
        assert_eq!(p.servers[busy].in_flight(), 1);
        for _ in 0..5 {
            assert_ne!(p.select(&[], &[]).expect("server").index(), busy);
        }
        drop(held);
        assert_eq!(p.servers[busy].in_flight(), 0);
    }

    #[test]
    fn weight_changes_apply_at_once_and_weight_zero_takes_no_new_requests() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastInFlight,
        ] {
            let p = pool(algorithm.clone(), &[1, 1]);
            set(&p, 0, AdminState::Ready, 3);
            assert!(p.is_reweighted.load(Ordering::Relaxed));
            if algorithm == Algorithm::LeastInFlight {
                // Requests held in flight spread 3 to 1.
                let held: Vec<InFlight> = (0..8)
                    .map(|_| p.select(&[], &[]).expect("server"))
                    .collect();
                assert_eq!(p.servers[0].in_flight(), 6, "{algorithm:?}");
                drop(held);
            } else {
                let c = counts(&p, 4000, |_| vec![]);
                assert!((2600..3400).contains(&c[0]), "{algorithm:?}: {c:?}");
            }
            set(&p, 0, AdminState::Ready, 0);
            assert_eq!(counts(&p, 100, |_| vec![]), vec![0, 100], "{algorithm:?}");
            assert_eq!(p.servers[0].setting().state, AdminState::Ready);
            set(&p, 0, AdminState::Ready, 1);
            assert!(
                !p.is_reweighted.load(Ordering::Relaxed),
                "back to the configured weights: the configured orders again"
            );
        }
        let p = pool(Algorithm::RoundRobin, &[1, 1]);
        set(&p, 0, AdminState::Ready, 3);
        assert_eq!(
            counts(&p, 400, |_| vec![]),
            vec![300, 100],
            "exact for round robin"
        );
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_a_drained_or_unweighted_server() {
        let p = pool(Algorithm::ConsistentHash(HashKey::ClientIp), &[1, 1, 1]);
        let owner = |p: &Arc<Pool>, i| p.select(&[], &users(i)).expect("server").index();
        let before: Vec<usize> = (0..300).map(|i| owner(&p, i)).collect();
        for change in [AdminState::Drain, AdminState::Ready] {
            let weight = if change == AdminState::Ready { 0 } else { 1 };
            set(&p, 1, change, weight);
            for (i, &was) in before.iter().enumerate() {
                let now = owner(&p, i);
                if was == 1 {
                    assert_ne!(now, 1, "{change:?}/{weight}: key {i} stayed");
                } else {
                    assert_eq!(now, was, "{change:?}/{weight}: key {i} moved");
                }
            }
            set(&p, 1, AdminState::Ready, 1);
            let back: Vec<usize> = (0..300).map(|i| owner(&p, i)).collect();
            assert_eq!(back, before);
        }
    }

    #[test]
    fn consistent_hash_finds_the_one_server_left_whatever_the_weights() {
        let p = pool(
            Algorithm::ConsistentHash(HashKey::ClientIp),
            &[1000, 1000, 1],
        );
        set(&p, 0, AdminState::Drain, 1000);
        set(&p, 1, AdminState::Maint, 1000);
        assert_eq!(counts(&p, 200, users), vec![0, 0, 200]);
    }

    #[test]
    fn maint_counts_as_down_and_ready_brings_an_unchecked_server_back() {
        let p = pool(Algorithm::RoundRobin, &[1, 1]);
        set(&p, 0, AdminState::Maint, 1);
        assert!(!p.servers[0].is_healthy());
        set(&p, 0, AdminState::Drain, 1);
        assert!(p.servers[0].is_healthy(), "no checks would bring it back");
        assert_eq!(counts(&p, 10, |_| vec![]), vec![0, 10]);
        set(&p, 0, AdminState::Ready, 1);
        assert_eq!(counts(&p, 10, |_| vec![]), vec![5, 5]);
    }

    #[test]
    fn a_rebuilt_pool_keeps_settings_of_unchanged_servers() {
        let p = pool(Algorithm::RoundRobin, &[1, 1, 1]);
        set(&p, 0, AdminState::Drain, 5);
        set(&p, 1, AdminState::Maint, 7);
        set(&p, 2, AdminState::Ready, 4);
        let mut config = p.config.clone();
        // Server 1 is given a new weight in the file: that weight applies.
        config.servers[1].weight = 2;
        let rebuilt = Pool::new(config, Some(&p));
        let settings: Vec<Setting> = rebuilt.servers.iter().map(Server::setting).collect();
        let expected = [
            (AdminState::Drain, 5),
            (AdminState::Maint, 2),
            (AdminState::Ready, 4),
        ];
        for (got, (state, weight)) in settings.iter().zip(expected) {
            assert_eq!(*got, Setting { state, weight });
        }
        assert!(!rebuilt.servers[1].is_healthy(), "maint stays down");
        assert!(rebuilt.is_reweighted.load(Ordering::Relaxed));
    }

    #[test]
    fn servers_are_found_by_address_as_written_or_resolved() {
        let mut p = pool(Algorithm::RoundRobin, &[1, 1]);
        Arc::get_mut(&mut p).expect("unique").servers[1].config.name = "backend:10001".into();
        assert_eq!(p.find_server("127.0.0.1:10000"), Some(0));
        assert_eq!(p.find_server("backend:10001"), Some(1));
        assert_eq!(p.find_server("127.0.0.1:10001"), Some(1));
        assert_eq!(p.find_server("127.0.0.1:9"), None);
    }
}
