//! How obleth finds its Redis: one server, the master a set of sentinels
//! names, or a cluster from seed nodes; and the one connection type the
//! key cache and the budgets use whichever it is.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::slot::key_slot;

/// Bound on connecting to one server and on each answer; the breaker, not
/// the client's reconnect loops, decides when Redis is back.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on a whole connect (resolving the master, every seed node).
const CONNECT_DEADLINE: Duration = Duration::from_secs(2);

/// Where Redis is, as the configuration names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    /// One server (`redis://`, `rediss://` or `unix://` URL).
    Standalone { url: String },
    /// The master that `sentinels` (`redis://host:port` URLs) know as
    /// `master_name`; followed across failovers.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        auth: NodeAuth,
    },
    /// A Redis Cluster reached through any of `nodes` (`redis://` URLs).
    Cluster { nodes: Vec<String>, auth: NodeAuth },
}

/// Credentials for the data nodes a sentinel or a cluster points at (a
/// standalone URL carries its own).
#[derive(Clone, Default, PartialEq)]
pub struct NodeAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Never prints the password, so a debug dump of the configuration is safe
/// to log.
impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Topology {
    /// Checks the addresses parse, so a typo fails at start-up rather than
    /// on every reconnect.
    pub fn validate(&self) -> RedisResult<()> {
        match self {
            Topology::Standalone { url } => redis::Client::open(url.as_str()).map(drop),
            Topology::Sentinel { sentinels, .. } => Sentinel::build(sentinels.clone()).map(drop),
            Topology::Cluster { nodes, .. } => {
                redis::cluster::ClusterClient::new(nodes.clone()).map(drop)
            }
        }
    }

    /// Connects once: to the URL, to the master the sentinels name now
    /// (checked to be a master), or to the cluster. Returns the connection
    /// and the address it reached, for the failover log line.
    pub(super) async fn connect(&self) -> RedisResult<(Connection, String)> {
        match tokio::time::timeout(CONNECT_DEADLINE, self.connect_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "connect timed out",
            ))),
        }
    }

    async fn connect_unbounded(&self) -> RedisResult<(Connection, String)> {
        match self {
            Topology::Standalone { url } => {
                let client = redis::Client::open(url.as_str())?;
                let address = client.get_connection_info().addr.to_string();
                Ok((Connection::Single(manager(client).await?), address))
            }
            Topology::Sentinel {
                sentinels,
                master_name,
                auth,
            } => {
                let mut sentinel = Sentinel::build(sentinels.clone())?;
                let node = SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: Some(redis::RedisConnectionInfo {
                        username: auth.username.clone(),
                        password: auth.password.clone(),
                        ..Default::default()
                    }),
                };
                let client = sentinel.async_master_for(master_name, Some(&node)).await?;
                let address = client.get_connection_info().addr.to_string();
                Ok((Connection::Single(manager(client).await?), address))
            }
            Topology::Cluster { nodes, auth } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .max_retry_wait(200);
                if let Some(user) = &auth.username {
                    builder = builder.username(user.clone());
                }
                if let Some(password) = &auth.password {
                    builder = builder.password(password.clone());
                }
                let conn = builder.build()?.get_async_connection().await?;
                Ok((
                    Connection::Cluster(conn),
                    format!("{} seed nodes", nodes.len()),
                ))
            }
        }
    }

    /// Servers to subscribe on for invalidations, in the order to try:
    /// the standalone server, the master last reached (`master`, behind
    /// Sentinel), or every seed node (a cluster forwards PUBLISH to all its
    /// nodes, so any one will do).
    pub(super) fn subscription_clients(&self, master: &str) -> Vec<redis::Client> {
        let urls = match self {
            Topology::Standalone { url } => vec![url.clone()],
            Topology::Sentinel { auth, .. } if !master.is_empty() => {
                vec![with_auth(&format!("redis://{master}"), auth)]
            }
            Topology::Sentinel { .. } => Vec::new(),
            Topology::Cluster { nodes, auth } => nodes.iter().map(|n| with_auth(n, auth)).collect(),
        };
        urls.iter()
            .filter_map(|url| redis::Client::open(url.as_str()).ok())
            .collect()
    }
}
/// `url` with the node credentials, unless it has its own.
fn with_auth(url: &str, auth: &NodeAuth) -> String {
    match (&auth.password, url.strip_prefix("redis://")) {
        (Some(password), Some(rest)) if !rest.contains('@') => {
            let user = auth.username.as_deref().unwrap_or("");
            format!("redis://{}:{}@{rest}", percent(user), percent(password))
        }
        _ => url.to_string(),
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn manager(client: redis::Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(1)
        .set_max_delay(200);
    ConnectionManager::new_with_config(client, config).await
}

/// A connection to one server (standalone or the sentinels' master) or to
/// a cluster, which routes each command by its key (and follows MOVED and
/// ASK) itself. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Waits until `replicas` replicas of the master holding `key` have
    /// acknowledged every write made so far on this connection, or
    /// `timeout`; returns how many did (Redis' `WAIT`).
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Connection::Single(conn) => wait.query_async(conn).await,
            Connection::Cluster(conn) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(&wait, routing).await?;
                redis::from_redis_value(&value)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_credentials_are_added_to_bare_urls_only() {
        let auth = NodeAuth {
            username: None,
            password: Some("p@ss:w/rd".into()),
        };
        assert_eq!(
            with_auth("redis://10.0.0.1:7000", &auth),
            "redis://:p%40ss%3Aw%2Frd@10.0.0.1:7000"
        );
        assert_eq!(
            with_auth("redis://u:own@10.0.0.1:7000", &auth),
            "redis://u:own@10.0.0.1:7000"
        );
        assert_eq!(
            with_auth("redis://10.0.0.1:7000", &NodeAuth::default()),
            "redis://10.0.0.1:7000"
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let auth = NodeAuth {
            username: Some("gw".into()),
            password: Some("hunter2".into()),
        };
        let text = format!("{auth:?}");
        assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
    }

    #[test]
    fn an_unparsable_address_is_refused_up_front() {
        let bad = Topology::Cluster {
            nodes: vec!["not a url".into()],
            auth: NodeAuth::default(),
        };
        assert!(bad.validate().is_err());
        let good = Topology::Sentinel {
            sentinels: vec!["redis://127.0.0.1:26379".into()],
            master_name: "obleth".into(),
            auth: NodeAuth::default(),
        };
        assert!(good.validate().is_ok());
    }
}
