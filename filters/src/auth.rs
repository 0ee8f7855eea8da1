//! Key authentication: which secret the client sent, what it hashes to, and
//! which principal (key + tenant) that hash belongs to.
//!
//! Resolution goes in-process cache (moka, 5 minutes) → Redis hot cache →
//! the store. Unknown keys are cached negatively for a short time at both
//! levels, so a flood of invalid keys reaches the store at most once per key
//! and interval, and concurrent misses for one key are coalesced into one
//! lookup. Secrets never leave this module: only their SHA-256 (with an
//! optional server pepper) is looked up, stored or cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_link::Connection;
use async_trait::async_trait;
use moka::future::Cache;
use moka::Expiry;

use crate::redis_link::{Outcome, RedisLink};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::records::Principal;

/// How long a found key stays in the in-process and Redis caches.
pub const FOUND_TTL: Duration = Duration::from_secs(300);
/// How long an unknown key is remembered as unknown.
pub const MISSING_TTL: Duration = Duration::from_secs(30);
const LOCAL_CAPACITY: u64 = 100_000;
/// Longest wait for the Redis hot cache before asking the store.
const HOT_DEADLINE: Duration = Duration::from_millis(500);

/// Prefix of every secret obleth issues, so leaked keys are recognisable.
pub const SECRET_PREFIX: &str = "obk_";

/// The credential a request carries: `Authorization: Bearer …` or
/// `x-api-key: …`. Returns `None` when neither is present or usable.
pub fn credential<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
) -> Option<&'a str> {
    let bearer = authorization
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    bearer
        .or_else(|| {
            x_api_key
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
        })
        .filter(|s| !s.is_empty())
}

/// Hashes secrets as SHA-256 over pepper and secret.
#[derive(Clone)]
pub struct KeyHasher {
    pepper: Vec<u8>,
}

impl KeyHasher {
    pub fn new(pepper: Option<&str>) -> Self {
        Self {
            pepper: pepper.unwrap_or_default().as_bytes().to_vec(),
        }
    }

    /// Lower-case hex of SHA-256(pepper ‖ secret).
    pub fn hash(&self, secret: &str) -> String {
        let mut h = openssl::sha::Sha256::new();
        h.update(&self.pepper);
        h.update(secret.as_bytes());
        hex::encode(h.finish())
    }
}

/// A new secret: the prefix and 256 random bits, base32-free lower-case hex.
pub fn new_secret() -> Result<String, openssl::error::ErrorStack> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// The part of a secret that may be shown again (prefix and 4 characters).
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 4).collect()
}

/// Why the store could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where principals come from when no cache has them: the store.
#[async_trait]
pub trait PrincipalSource: Send + Sync + 'static {
    async fn principal_by_key_hash(&self, key_hash: &str)
        -> Result<Option<Principal>, SourceError>;
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")]
    Missing,
    #[error("invalid API key")]
    Unknown,
    #[error("key lookup unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug)]
enum Lookup {
    Found(Arc<Principal>),
    Missing,
}

struct LookupExpiry;

impl Expiry<String, Lookup> for LookupExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Lookup,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Lookup::Found(_) => FOUND_TTL,
            Lookup::Missing => MISSING_TTL,
        })
    }
}

/// What the Redis hot cache holds per key hash.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HotEntry {
    Found(Box<Principal>),
    Missing,
}

/// The Redis hot cache shared by all replicas. While Redis is known down
/// it is skipped without a word (the link logs the outage once).
#[derive(Clone)]
pub struct HotCache {
    link: RedisLink,
    prefix: String,
}

impl HotCache {
    pub fn new(link: RedisLink, prefix: impl Into<String>) -> Self {
        Self {
            link,
            prefix: prefix.into(),
        }
    }

    /// Runs `call` on the connection within [`HOT_DEADLINE`], telling the
    /// breaker how it went; `None` while Redis is known down.
    async fn call<T, F>(&self, call: impl FnOnce(Connection) -> F) -> Option<redis::RedisResult<T>>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.link.connection()?;
        Some(match tokio::time::timeout(HOT_DEADLINE, call(conn)).await {
            Ok(Ok(v)) => {
                self.link.observe(Outcome::Answered);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.link.observe(Outcome::Failed(&e));
                Err(e)
            }
            Err(_) => {
                self.link.observe(Outcome::TimedOut);
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "redis timed out",
                )))
            }
        })
    }

    fn key(&self, hash: &str) -> String {
        format!("{}key:{hash}", self.prefix)
    }

    async fn get(&self, hash: &str) -> redis::RedisResult<Option<HotEntry>> {
        let key = self.key(hash);
        let text: Option<String> = match self.call(|mut c| async move { c.get(key).await }).await {
            Some(result) => result?,
            None => None,
        };
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn put(&self, hash: &str, entry: &HotEntry) -> redis::RedisResult<()> {
        let ttl = match entry {
            HotEntry::Found(_) => FOUND_TTL,
            HotEntry::Missing => MISSING_TTL,
        };
        let Ok(text) = serde_json::to_string(entry) else {
            return Ok(());
        };
        let key = self.key(hash);
        self.call(|mut c| async move { c.set_ex(key, text, ttl.as_secs()).await })
            .await
            .unwrap_or(Ok(()))
    }

    /// Forgets the given key hashes (after a change to them or their
    /// tenant). While Redis is down there is nothing to forget from: its
    /// entries expire, and a change made meanwhile is refreshed by every
    /// replica's invalidation listener when it reconnects.
    pub async fn forget(&self, hashes: &[String]) -> redis::RedisResult<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.key(h)).collect();
        self.call(|mut c| async move { c.del(keys).await })
            .await
            .unwrap_or(Ok(()))
    }
}

/// Resolves secrets to principals through the cache levels.
pub struct KeyResolver {
    hasher: KeyHasher,
    local: Cache<String, Lookup>,
    hot: Option<HotCache>,
    source: Arc<dyn PrincipalSource>,
}

impl KeyResolver {
    pub fn new(hasher: KeyHasher, hot: Option<HotCache>, source: Arc<dyn PrincipalSource>) -> Self {
        Self {
            hasher,
            local: Cache::builder()
                .max_capacity(LOCAL_CAPACITY)
                .expire_after(LookupExpiry)
                .build(),
            hot,
            source,
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The principal owning `secret`.
    pub async fn resolve(&self, secret: &str) -> Result<Arc<Principal>, AuthError> {
        let hash = self.hasher.hash(secret);
        let lookup = self
            .local
            .try_get_with(hash.clone(), self.load(&hash))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        match lookup {
            Lookup::Found(p) => Ok(p),
            Lookup::Missing => Err(AuthError::Unknown),
        }
    }

    async fn load(&self, hash: &str) -> Result<Lookup, SourceError> {
        if let Some(hot) = &self.hot {
            match hot.get(hash).await {
                Ok(Some(HotEntry::Found(p))) => return Ok(Lookup::Found(Arc::new(*p))),
                Ok(Some(HotEntry::Missing)) => return Ok(Lookup::Missing),
                Ok(None) => {}
                Err(e) => tracing::warn!("redis hot cache unavailable, asking the store: {e}"),
            }
        }
        let found = self.source.principal_by_key_hash(hash).await?;
        if let Some(hot) = &self.hot {
            let entry = match &found {
                Some(p) => HotEntry::Found(Box::new(p.clone())),
                None => HotEntry::Missing,
            };
            if let Err(e) = hot.put(hash, &entry).await {
                tracing::warn!("cannot fill the redis hot cache: {e}");
            }
        }
        Ok(found.map_or(Lookup::Missing, |p| Lookup::Found(Arc::new(p))))
    }

    /// Drops every in-process entry; the next lookups go to Redis or the store.
    pub fn invalidate_local(&self) {
        self.local.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn credential_from_bearer_or_x_api_key() {
        assert_eq!(credential(Some(b"Bearer abc"), None), Some("abc"));
        assert_eq!(credential(Some(b"bearer  abc "), None), Some("abc"));
        assert_eq!(credential(None, Some(b"xyz")), Some("xyz"));
        assert_eq!(
            credential(Some(b"Basic dXNlcg=="), Some(b"xyz")),
            Some("xyz")
        );
        assert_eq!(credential(Some(b"Bearer "), None), None);
        assert_eq!(credential(None, None), None);
    }

    #[test]
    fn hashing_uses_the_pepper() {
        let plain = KeyHasher::new(None).hash("secret");
        assert_eq!(
            plain,
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert_ne!(KeyHasher::new(Some("pepper")).hash("secret"), plain);
    }

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64, "256 bits in hex");
        assert_eq!(display_prefix(&a).len(), SECRET_PREFIX.len() + 4);
    }

    struct CountingSource(AtomicUsize);

    #[async_trait]
    impl PrincipalSource for CountingSource {
        async fn principal_by_key_hash(
            &self,
            _hash: &str,
        ) -> Result<Option<Principal>, SourceError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(None)
        }
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_negatively_and_misses_coalesced() {
        let source = Arc::new(CountingSource(AtomicUsize::new(0)));
        let resolver = Arc::new(KeyResolver::new(KeyHasher::new(None), None, source.clone()));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let r = resolver.clone();
                tokio::spawn(async move { r.resolve("obk_nope").await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Err(AuthError::Unknown)));
        }
        assert!(matches!(
            resolver.resolve("obk_nope").await,
            Err(AuthError::Unknown)
        ));
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            1,
            "one store lookup for 51 requests"
        );
        resolver.invalidate_local();
        let _ = resolver.resolve("obk_nope").await;
        assert_eq!(source.0.load(Ordering::SeqCst), 2);
    }
}
