//! The Redis connection the key cache and the budgets share, behind a
//! breaker. While Redis is known to be down, every caller skips it at once
//! (and applies `fail_open`) instead of each waiting out a timeout; one
//! background probe watches for its return. The log says "budget store
//! down" and "budget store back" once per change.
//!
//! - [`topology`]: standalone, Sentinel or Cluster, and the one
//!   [`Connection`] type over them;
//! - [`slot`]: Redis Cluster's key → slot map.
//!
//! Behind Sentinel, a failover shows as refused connections (the master
//! died) or `READONLY` answers (it was demoted): either opens the breaker,
//! and the probe asks the sentinels for the master again rather than
//! trusting the old address, logging the new master once. A cluster
//! client follows MOVED, ASK and promoted replicas itself; the probe's
//! PING goes to every master, so the breaker closes only once each slot
//! has one again.

mod slot;
mod topology;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub use slot::key_slot;
pub use topology::{Connection, NodeAuth, Topology};

/// Timeouts in a row that open the breaker (a refused connection opens it
/// at once).
const TIMEOUTS_TO_OPEN: u32 = 3;
/// How often the probe asks a down Redis whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe waits for an answer.
const PROBE_DEADLINE: Duration = Duration::from_millis(500);

/// Word that a connection to Redis was lost (the invalidation listener
/// reads the end of its stream the moment Redis dies): until Redis is
/// asked again, answers held from before (budget leases) are not trusted.
#[derive(Default)]
struct Dropped {
    unconfirmed: AtomicBool,
    signal: Notify,
}

/// A shared Redis connection that knows whether Redis is reachable.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    conn: RwLock<Option<Connection>>,
    /// The server reached last (the master, behind Sentinel).
    address: RwLock<String>,
    down: AtomicBool,
    timeouts: AtomicU32,
    wake_probe: Notify,
    up: watch::Sender<bool>,
    dropped: Arc<Dropped>,
}

/// How a call to Redis ended, for the breaker.
pub enum Outcome<'a> {
    Answered,
    TimedOut,
    Failed(&'a redis::RedisError),
}

impl RedisLink {
    /// Connects to one server at `url`; see [`RedisLink::open`].
    pub async fn connect(url: &str) -> redis::RedisResult<RedisLink> {
        Self::open(Topology::Standalone { url: url.into() }).await
    }

    /// Connects to `topology` when Redis answers; when it does not, the
    /// link starts down and the probe connects once Redis appears. Only an
    /// address that cannot be parsed is an error. Must run on a Tokio
    /// runtime.
    pub async fn open(topology: Topology) -> redis::RedisResult<RedisLink> {
        topology.validate()?;
        let dropped = Arc::new(Dropped::default());
        let first = topology.connect().await;
        let (up, _) = watch::channel(first.is_ok());
        let (conn, address) = match &first {
            Ok((conn, address)) => (Some(conn.clone()), address.clone()),
            Err(_) => (None, String::new()),
        };
        let link = RedisLink {
            inner: Arc::new(Inner {
                topology,
                down: AtomicBool::new(first.is_err()),
                conn: RwLock::new(conn),
                address: RwLock::new(address),
                timeouts: AtomicU32::new(0),
                wake_probe: Notify::new(),
                up,
                dropped,
            }),
        };
        if let Err(e) = &first {
            tracing::warn!("budget store down: {e}; serving as fail_open says until it is back");
        }
        tokio::spawn(link.clone().probe());
        Ok(link)
    }

    /// The connection to use, or `None` while Redis is known down.
    pub fn connection(&self) -> Option<Connection> {
        if self.inner.down.load(Ordering::Relaxed) {
            return None;
        }
        self.inner
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether Redis is reachable now.
    pub fn is_up(&self) -> bool {
        !self.inner.down.load(Ordering::Relaxed)
    }

    /// Reports a connection to Redis found closed by its server: the probe
    /// asks Redis at once, and opens the breaker when it does not answer.
    pub fn connection_lost(&self) {
        self.inner
            .dropped
            .unconfirmed
            .store(true, Ordering::Relaxed);
        self.inner.dropped.signal.notify_one();
    }

    /// Whether Redis is up and no connection to it was lost since it last
    /// answered: what an answer held from before (a budget lease) may be
    /// trusted on. A lost connection is checked at once by the probe.
    pub fn is_steady(&self) -> bool {
        self.is_up() && !self.inner.dropped.unconfirmed.load(Ordering::Relaxed)
    }

    /// Follows the link's state: `true` whenever Redis is (back) up.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.inner.up.subscribe()
    }

    /// Tells the breaker how a call ended.
    pub fn observe(&self, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Answered => self.inner.timeouts.store(0, Ordering::Relaxed),
            Outcome::TimedOut => {
                let n = self.inner.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_TO_OPEN {
                    self.trip(&format!("{n} timeouts in a row"));
                }
            }
            Outcome::Failed(e) if is_unreachable(e) || is_failing_over(e) => {
                self.trip(&e.to_string())
            }
            // A script error or a wrong type is Redis answering.
            Outcome::Failed(_) => self.inner.timeouts.store(0, Ordering::Relaxed),
        }
    }

    fn trip(&self, why: &str) {
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("budget store down: {why}; skipping it until it is back");
            self.inner.up.send_replace(false);
            self.inner.wake_probe.notify_one();
        }
    }

    /// Subscribes to `channel` on a server that sees every PUBLISH: the
    /// standalone server, the current master, or the first seed node of a
    /// cluster that answers.
    pub async fn subscribe(&self, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
        let mut last =
            redis::RedisError::from((redis::ErrorKind::IoError, "no node to subscribe on"));
        let master = self
            .inner
            .address
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for client in self.inner.topology.subscription_clients(&master) {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(PROBE_DEADLINE * 4, subscribed).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last =
                        redis::RedisError::from((redis::ErrorKind::IoError, "subscribe timed out"))
                }
            }
        }
        Err(last)
    }

    /// Waits while Redis is up; while it is down, asks every
    /// [`PROBE_EVERY`] whether it is back (connecting first if it never was).
    async fn probe(self) {
        loop {
            if !self.inner.down.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = self.inner.wake_probe.notified() => {}
                    _ = self.inner.dropped.signal.notified() => self.check_dropped().await,
                }
                continue;
            }
            tokio::time::sleep(PROBE_EVERY).await;
            if self.is_back().await {
                self.close();
            }
        }
    }

    /// Closes the breaker: Redis answered.
    fn close(&self) {
        self.inner.timeouts.store(0, Ordering::Relaxed);
        if self.inner.down.swap(false, Ordering::Relaxed) {
            self.inner.up.send_replace(true);
            tracing::info!("budget store back");
        }
    }

    /// A connection was lost: Redis answers again (the client reconnected),
    /// or the breaker opens now rather than at the next request.
    async fn check_dropped(&self) {
        if !self.inner.dropped.unconfirmed.load(Ordering::Relaxed) {
            return;
        }
        if self.is_back().await {
            // The breaker may have opened meanwhile (a request saw the
            // same loss): what answered closes it.
            if self.inner.down.load(Ordering::Relaxed) {
                self.close();
            }
        } else {
            self.trip("the connection was lost and Redis does not answer");
        }
        self.inner
            .dropped
            .unconfirmed
            .store(false, Ordering::Relaxed);
    }

    /// Whether Redis answers again. Behind Sentinel the master is asked for
    /// anew each time: the old one may answer PING as a replica.
    async fn is_back(&self) -> bool {
        let current = match self.inner.topology {
            Topology::Sentinel { .. } => None,
            _ => self
                .inner
                .conn
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        match current {
            Some(mut conn) => {
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut conn);
                matches!(
                    tokio::time::timeout(PROBE_DEADLINE, answer).await,
                    Ok(Ok(_))
                )
            }
            None => match self.inner.topology.connect().await {
                Ok((conn, address)) => {
                    *self.inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    let mut known = self
                        .inner
                        .address
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    if *known != address {
                        if let Topology::Sentinel { master_name, .. } = &self.inner.topology {
                            tracing::warn!(
                                "redis master {master_name:?} is now {address} (was {}); following it",
                                if known.is_empty() { "unknown" } else { known.as_str() }
                            );
                        }
                        *known = address;
                    }
                    true
                }
                Err(_) => false,
            },
        }
    }
}

/// A refused or broken connection: Redis is away, not just slow.
fn is_unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout()
}

/// The server answered, but is no longer (or not yet) the master for the
/// key: a demoted master, or a cluster slot whose master is being replaced.
/// (`TRYAGAIN`, a slot half-way through a move, is not: it concerns one
/// slot for a moment, and only that call follows `fail_open`.)
fn is_failing_over(e: &redis::RedisError) -> bool {
    use redis::ErrorKind::*;
    matches!(
        e.kind(),
        ReadOnly | MasterDown | ClusterDown | ClusterConnectionNotFound
    ) || e.code() == Some("READONLY")
        // A script's write refused inside it, as Redis 7 reports it.
        || e.to_string().contains("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_starts_down_and_callers_skip_it() {
        let link = RedisLink::connect("redis://127.0.0.1:1/")
            .await
            .expect("a valid URL");
        assert!(!link.is_up());
        assert!(link.connection().is_none());
    }

    #[tokio::test]
    async fn timeouts_in_a_row_open_the_breaker_and_the_probe_closes_it() {
        let link = RedisLink::connect("redis://127.0.0.1:6379/")
            .await
            .expect("a valid URL");
        assert!(link.is_up(), "Redis runs on 127.0.0.1:6379 for the tests");
        link.observe(Outcome::TimedOut);
        link.observe(Outcome::Answered);
        link.observe(Outcome::TimedOut);
        link.observe(Outcome::TimedOut);
        assert!(link.is_up(), "an answer in between resets the run");
        link.observe(Outcome::TimedOut);
        assert!(!link.is_up(), "three in a row open it");
        let mut up = link.watch();
        tokio::time::timeout(Duration::from_secs(5), up.wait_for(|up| *up))
            .await
            .expect("the probe finds Redis answering")
            .expect("link alive");
        assert!(link.connection().is_some());
    }
}
