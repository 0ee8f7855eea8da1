//! Pools of upstream servers: which servers are in rotation, how many requests
//! each is serving, and which one the next request goes to.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http::header;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora_ketama::{Bucket, Continuum};
use prometheus::IntGauge;

use crate::config::{Algorithm, HashKey, PoolConfig, ServerConfig};
use crate::metrics::{PoolMetrics, FAMILIES};

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
    /// pool is checked), set again after `rise` passing checks.
    healthy: AtomicBool,
    /// Without active checks, a refused connection ejects the server until
    /// this instant (milliseconds since process start).
    ejected_until_ms: AtomicU64,
    in_flight: AtomicUsize,
    peer: HttpPeer,
    healthy_gauge: IntGauge,
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
    /// Weighted round-robin order of server indices, spread as nginx's
    /// smooth weighted round robin spreads them.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
    ring: Option<Continuum>,
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
    /// Builds a pool; servers that also stood in `previous` (same address)
    /// keep their health state, so a reload does not send traffic to a
    /// server known to be down.
    pub fn new(config: PoolConfig, previous: Option<&Pool>) -> Self {
        let servers: Vec<Server> = config
            .servers
            .iter()
            .map(|s| {
                let old =
                    previous.and_then(|p| p.servers.iter().find(|o| o.config.address == s.address));
                let healthy = old.is_none_or(|o| o.healthy.load(Ordering::Relaxed));
                let gauge = FAMILIES
                    .server_healthy
                    .with_label_values(&[&config.name, &s.name]);
                gauge.set(i64::from(healthy));
                Server {
                    peer: build_peer(&config, s),
                    config: s.clone(),
                    healthy: AtomicBool::new(healthy),
                    ejected_until_ms: AtomicU64::new(
                        old.map_or(0, |o| o.ejected_until_ms.load(Ordering::Relaxed)),
                    ),
                    in_flight: AtomicUsize::new(0),
                    healthy_gauge: gauge,
                }
            })
            .collect();
        let ring = matches!(config.algorithm, Algorithm::ConsistentHash(_)).then(|| {
            let buckets: Vec<Bucket> = servers
                .iter()
                .map(|s| Bucket::new(s.config.address, s.config.weight))
                .collect();
            Continuum::new(&buckets)
        });
        Self {
            schedule: smooth_schedule(&servers),
            metrics: PoolMetrics::new(&config.name),
            cursor: AtomicUsize::new(0),
            ring,
            servers,
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Picks a server for the next attempt, skipping servers out of rotation,
    /// at their connection limit, or already tried by this request.
    /// `hash_key` is used by consistent hashing only.
    pub fn select(self: &Arc<Self>, tried: &[usize], hash_key: &[u8]) -> Option<InFlight> {
        let eligible = |i: usize| {
            let s = &self.servers[i];
            !tried.contains(&i) && s.is_healthy() && s.has_room()
        };
        let index = match &self.config.algorithm {
            Algorithm::RoundRobin => {
                let n = self.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| self.schedule[(start + k) % n])
                    .find(|&i| eligible(i))
            }
            Algorithm::Random => {
                let candidates: Vec<usize> =
                    (0..self.servers.len()).filter(|&i| eligible(i)).collect();
                let total: u64 = candidates
                    .iter()
                    .map(|&i| u64::from(self.servers[i].config.weight))
                    .sum();
                let mut pick = if total == 0 {
                    0
                } else {
                    rand::random::<u64>() % total
                };
                candidates.into_iter().find(|&i| {
                    let w = u64::from(self.servers[i].config.weight);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
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
                    .filter(|&i| eligible(i))
                    .min_by_key(|&i| {
                        let s = &self.servers[i];
                        (s.in_flight() as u64 + 1) * 1_000_000 / u64::from(s.config.weight)
                    })
            }
            Algorithm::ConsistentHash(_) => self.ring.as_ref().and_then(|ring| {
                ring.node_iter(hash_key)
                    .take(self.servers.len() * 160 * 4)
                    .filter_map(|addr| self.servers.iter().position(|s| s.config.address == *addr))
                    .find(|&i| eligible(i))
            }),
        }?;
        self.servers[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            pool: Arc::clone(self),
            index,
        })
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

/// Expands weights into a cyclic order in which each server appears
/// `weight` times, interleaved (smooth weighted round robin).
fn smooth_schedule(servers: &[Server]) -> Vec<usize> {
    let weights: Vec<i64> = servers.iter().map(|s| i64::from(s.config.weight)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
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
        assert_eq!(smooth_schedule(&p.servers), vec![0, 0, 1, 0]);
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
}
