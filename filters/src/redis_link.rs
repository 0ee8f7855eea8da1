//! The Redis connection the key cache and the budgets share, behind a
//! breaker. While Redis is known to be down, every caller skips it at once
//! (and applies `fail_open`) instead of each waiting out a timeout; one
//! background probe watches for its return. The log says "budget store
//! down" and "budget store back" once per change.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{watch, Notify};

/// Timeouts in a row that open the breaker (a refused connection opens it
/// at once).
const TIMEOUTS_TO_OPEN: u32 = 3;
/// How often the probe asks a down Redis whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe waits for an answer.
const PROBE_DEADLINE: Duration = Duration::from_millis(500);

/// A shared Redis connection that knows whether Redis is reachable.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    down: AtomicBool,
    timeouts: AtomicU32,
    wake_probe: Notify,
    up: watch::Sender<bool>,
}

/// How a call to Redis ended, for the breaker.
pub enum Outcome<'a> {
    Answered,
    TimedOut,
    Failed(&'a redis::RedisError),
}

impl RedisLink {
    /// Connects to `url` when Redis answers; when it does not, the link
    /// starts down and the probe connects once Redis appears. Only a URL
    /// that cannot be parsed is an error. Must run on a Tokio runtime.
    pub async fn connect(url: &str) -> redis::RedisResult<RedisLink> {
        let client = redis::Client::open(url)?;
        let first = connect_once(&client).await;
        let (up, _) = watch::channel(first.is_ok());
        let link = RedisLink {
            inner: Arc::new(Inner {
                client,
                down: AtomicBool::new(first.is_err()),
                conn: RwLock::new(first.as_ref().ok().cloned()),
                timeouts: AtomicU32::new(0),
                wake_probe: Notify::new(),
                up,
            }),
        };
        if let Err(e) = &first {
            tracing::warn!("budget store down: {e}; serving as fail_open says until it is back");
        }
        tokio::spawn(link.clone().probe());
        Ok(link)
    }

    /// The connection to use, or `None` while Redis is known down.
    pub fn connection(&self) -> Option<ConnectionManager> {
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
                    self.open(&format!("{n} timeouts in a row"));
                }
            }
            Outcome::Failed(e) if is_unreachable(e) => self.open(&e.to_string()),
            // A script error or a wrong type is Redis answering.
            Outcome::Failed(_) => self.inner.timeouts.store(0, Ordering::Relaxed),
        }
    }

    fn open(&self, why: &str) {
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("budget store down: {why}; skipping it until it is back");
            self.inner.up.send_replace(false);
            self.inner.wake_probe.notify_one();
        }
    }

    /// Waits while Redis is up; while it is down, asks every
    /// [`PROBE_EVERY`] whether it is back (connecting first if it never was).
    async fn probe(self) {
        loop {
            if !self.inner.down.load(Ordering::Relaxed) {
                self.inner.wake_probe.notified().await;
                continue;
            }
            tokio::time::sleep(PROBE_EVERY).await;
            let current = self
                .inner
                .conn
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let back = match current {
                Some(mut conn) => {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<String>(&mut conn);
                    matches!(
                        tokio::time::timeout(PROBE_DEADLINE, answer).await,
                        Ok(Ok(_))
                    )
                }
                None => match connect_once(&self.inner.client).await {
                    Ok(conn) => {
                        *self.inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                        true
                    }
                    Err(_) => false,
                },
            };
            if back {
                self.inner.timeouts.store(0, Ordering::Relaxed);
                self.inner.down.store(false, Ordering::Relaxed);
                self.inner.up.send_replace(true);
                tracing::info!("budget store back");
            }
        }
    }
}

/// A refused or broken connection: Redis is away, not just slow.
fn is_unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout()
}

async fn connect_once(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    // Fail fast while Redis is away; the breaker, not reconnect loops,
    // decides when it is back.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_millis(500))
        .set_number_of_retries(1)
        .set_max_delay(200);
    match tokio::time::timeout(
        Duration::from_secs(2),
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "connect timed out",
        ))),
    }
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
