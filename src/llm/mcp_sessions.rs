//! Which API key opened each MCP session (`Mcp-Session-Id`), so that no
//! other key can use it. Session ids are bearer values: only their SHA-256
//! is kept, in process and, with Redis, shared by every replica.

use std::time::Duration;

use moka::future::Cache;
use obleth_filters::redis_link::RedisLink;

/// How long a session stays bound after its last use here (and after it
/// was opened, in Redis).
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a request waits on Redis for a binding.
const REDIS_DEADLINE: Duration = Duration::from_millis(250);

/// The sessions' owners by hashed session id.
pub struct McpSessions {
    local: Cache<String, String>,
    shared: Option<(RedisLink, String)>,
}

impl McpSessions {
    /// `shared`: Redis and its key prefix, when configured.
    pub fn new(shared: Option<(RedisLink, String)>) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(SESSION_TTL)
                .build(),
            shared,
        }
    }

    fn hash(session: &str) -> String {
        hex::encode(openssl::sha::sha256(session.as_bytes()))
    }

    fn redis_key(prefix: &str, hash: &str) -> String {
        format!("{prefix}mcp_session:{hash}")
    }

    /// The key id that opened `session`, if any replica knows it. While
    /// Redis is down a session opened elsewhere is unknown here (the
    /// client opens a new one, as MCP has it do after a 404).
    pub async fn owner(&self, session: &str) -> Option<String> {
        let hash = Self::hash(session);
        if let Some(owner) = self.local.get(&hash).await {
            return Some(owner);
        }
        let (link, prefix) = self.shared.as_ref()?;
        let mut conn = link.connection()?;
        let key = Self::redis_key(prefix, &hash);
        let mut command = redis::cmd("GET");
        let get = command.arg(&key).query_async::<Option<String>>(&mut conn);
        match tokio::time::timeout(REDIS_DEADLINE, get).await {
            Ok(Ok(Some(owner))) => {
                self.local.insert(hash, owner.clone()).await;
                Some(owner)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!("cannot read an MCP session from redis: {e}");
                None
            }
            Err(_) => {
                tracing::warn!("reading an MCP session from redis timed out");
                None
            }
        }
    }

    /// Binds a session the server just opened to the key that opened it.
    pub async fn bind(&self, session: &str, key_id: &str) {
        let hash = Self::hash(session);
        self.local.insert(hash.clone(), key_id.to_string()).await;
        self.shared_write(&hash, Some(key_id)).await;
    }

    /// Forgets a session the client ended.
    pub async fn end(&self, session: &str) {
        let hash = Self::hash(session);
        self.local.invalidate(&hash).await;
        self.shared_write(&hash, None).await;
    }

    async fn shared_write(&self, hash: &str, owner: Option<&str>) {
        let Some((link, prefix)) = &self.shared else {
            return;
        };
        let Some(mut conn) = link.connection() else {
            return;
        };
        let key = Self::redis_key(prefix, hash);
        let command = match owner {
            Some(owner) => redis::cmd("SET")
                .arg(&key)
                .arg(owner)
                .arg("EX")
                .arg(SESSION_TTL.as_secs())
                .to_owned(),
            None => redis::cmd("DEL").arg(&key).to_owned(),
        };
        let write = command.query_async::<()>(&mut conn);
        match tokio::time::timeout(REDIS_DEADLINE, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot store an MCP session in redis: {e}"),
            Err(_) => tracing::warn!("storing an MCP session in redis timed out"),
        }
    }
}
