//! The LLM side of the gateway: the store, the key resolver, the model
//! catalog, and how changes made through the admin API reach every replica
//! (Redis pub/sub, or in-process without Redis).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use http::HeaderValue;
use jiff::Timestamp;
use obleth_filters::admission::{Capacity, Scheduler};
use obleth_filters::auth::{HotCache, KeyHasher, KeyResolver};
use obleth_filters::budget::{BudgetStore, Limits, LocalBudgets, RedisBudgets, Scope};
use obleth_filters::records::Model;
use obleth_filters::records::{ApiKey, BudgetPeriod, Tenant};
use redis::aio::ConnectionManager;

use crate::config::{
    AdmissionSettings, Algorithm, BudgetSettings, Config, PoolConfig, RedisConfig, Seed,
    ServerConfig, Timeouts, UpstreamTls,
};
use crate::edge::pool::Pool;
use crate::store::secrets::UpstreamKeyCipher;
use crate::store::{KeySpec, ModelSpec, Store, StoreError};
use crate::telemetry::Telemetry;

/// The budget period a tenant is in at `now`: `lifetime`, or the month in
/// its timezone (`2026-11`).
pub fn budget_period(tenant: &Tenant, now: Timestamp) -> String {
    match tenant.budget_period {
        BudgetPeriod::Lifetime => "lifetime".to_string(),
        BudgetPeriod::Monthly => now.to_zoned(tenant.zone()).strftime("%Y-%m").to_string(),
    }
}

/// Unix milliseconds where the tenant's current budget period began.
pub fn period_start(tenant: &Tenant, now: Timestamp) -> u64 {
    match tenant.budget_period {
        BudgetPeriod::Lifetime => 0,
        BudgetPeriod::Monthly => now
            .to_zoned(tenant.zone())
            .start_of_day()
            .and_then(|d| d.with().day(1).build())
            .map_or(0, |d| d.timestamp().as_millisecond().max(0) as u64),
    }
}

fn usd_micros(usd: Option<f64>) -> Option<u64> {
    usd.map(|v| (v * 1e6).round().max(0.0) as u64)
}

/// The tenant's budget scope.
pub fn tenant_scope(tenant: &Tenant, now: Timestamp) -> Scope {
    Scope {
        id: format!("t:{}", tenant.id),
        limits: Limits {
            tokens_per_minute: tenant.tokens_per_minute,
            budget_tokens: tenant.budget_tokens,
            budget_usd_micros: usd_micros(tenant.budget_usd),
            period: budget_period(tenant, now),
        },
    }
}

/// A key's own budget scope (counted in its tenant's period).
pub fn key_scope(key: &ApiKey, tenant: &Tenant, now: Timestamp) -> Scope {
    Scope {
        id: format!("k:{}", key.id),
        limits: Limits {
            tokens_per_minute: key.tokens_per_minute.unwrap_or(0),
            budget_tokens: key.budget_tokens,
            budget_usd_micros: usd_micros(key.budget_usd),
            period: budget_period(tenant, now),
        },
    }
}

/// Why the LLM side could not start.
#[derive(Debug, thiserror::Error)]
pub enum LlmStartError {
    #[error("store {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("redis {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("seed: {0}")]
    Seed(StoreError),
    #[error("{0}")]
    Telemetry(std::io::Error),
}

/// A model ready to route to.
#[derive(Debug)]
pub struct CatalogModel {
    pub model: Model,
    /// Set for models served from a base URL instead of a configured pool.
    pub direct: Option<DirectUpstream>,
}

/// A model's own upstream, built from its `base_url`.
#[derive(Debug)]
pub struct DirectUpstream {
    pub pool: Arc<Pool>,
    /// The URL's path, e.g. `/v1`; endpoint paths are appended to it.
    pub base_path: String,
    pub host: HeaderValue,
}

/// Enabled models by name and alias, swapped whole on every reload.
#[derive(Default)]
pub struct Catalog {
    by_name: ArcSwap<HashMap<String, Arc<CatalogModel>>>,
    listed: ArcSwap<Vec<Arc<CatalogModel>>>,
}

impl Catalog {
    pub fn lookup(&self, name: &str) -> Option<Arc<CatalogModel>> {
        self.by_name.load().get(name).cloned()
    }

    /// Every enabled model, once, by name.
    pub fn list(&self) -> Arc<Vec<Arc<CatalogModel>>> {
        self.listed.load_full()
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let previous = self.by_name.load_full();
        let mut by_name = HashMap::new();
        let mut listed = Vec::new();
        for model in store.models().await?.into_iter().filter(|m| m.enabled) {
            let direct = match &model.base_url {
                Some(url) => {
                    let old = previous.get(&model.name).and_then(|m| m.direct.as_ref());
                    match direct_upstream(&model.name, url, old).await {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!(model = %model.name, "model left out: base_url {url}: {e}");
                            continue;
                        }
                    }
                }
                None => None,
            };
            let entry = Arc::new(CatalogModel { model, direct });
            by_name.insert(entry.model.name.clone(), entry.clone());
            listed.push(entry);
        }
        // Names and aliases are one namespace (the store refuses a clash);
        // rows written before that rule may still clash, and then a name
        // always wins over another model's alias.
        for entry in &listed {
            for alias in &entry.model.aliases {
                match by_name.get(alias) {
                    Some(owner) if !Arc::ptr_eq(owner, entry) => tracing::warn!(
                        model = %entry.model.name,
                        "alias {alias:?} ignored: it names the model {:?}",
                        owner.model.name
                    ),
                    _ => {
                        by_name.insert(alias.clone(), entry.clone());
                    }
                }
            }
        }
        self.by_name.store(Arc::new(by_name));
        self.listed.store(Arc::new(listed));
        Ok(())
    }
}

async fn direct_upstream(
    name: &str,
    url: &str,
    old: Option<&DirectUpstream>,
) -> Result<DirectUpstream, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("scheme must be http or https".into()),
    };
    let host = uri.host().ok_or("no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let address = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("resolves to no address")?;
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let config = PoolConfig {
        name: format!("model:{name}"),
        algorithm: Algorithm::RoundRobin,
        servers: vec![ServerConfig {
            name: authority.clone(),
            address,
            weight: 1,
            max_connections: None,
        }],
        tls: tls.then(|| UpstreamTls {
            sni: host.clone(),
            verify: true,
        }),
        health_check: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(300),
            write: Duration::from_secs(60),
            total: None,
            idle_keepalive: Duration::from_secs(60),
        },
        retries: 1,
        retry_non_idempotent: false,
        host_header: HeaderValue::from_str(&authority).ok(),
    };
    Ok(DirectUpstream {
        pool: Arc::new(Pool::new(config, old.map(|o| &*o.pool))),
        base_path: uri.path().trim_end_matches('/').to_string(),
        host: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    })
}

/// Everything LLM routes need, shared by all listeners and the admin API.
pub struct LlmState {
    pub store: Store,
    pub resolver: KeyResolver,
    pub catalog: Catalog,
    /// Redis-backed with Redis configured, in-process otherwise.
    pub budgets: Arc<dyn BudgetStore>,
    pub budget_settings: BudgetSettings,
    /// Fair admission; each enabled model is a pool of `max_in_flight`.
    pub scheduler: Scheduler,
    pub admission: AdmissionSettings,
    pub telemetry: Telemetry,
    hot: Option<HotCache>,
    publisher: Option<ConnectionManager>,
    channel: String,
}

impl LlmState {
    /// Connects the store (migrating and seeding it as configured) and
    /// Redis, and loads the model catalog.
    pub async fn start(config: &Config) -> Result<Arc<LlmState>, LlmStartError> {
        let url = crate::config::redact_url(&config.store.database_url);
        let store = Store::connect(
            &config.store.database_url,
            UpstreamKeyCipher::new(config.encryption_key.as_deref()),
        )
        .await
        .map_err(|source| LlmStartError::Store {
            url: url.clone(),
            source,
        })?;
        if config.store.migrate {
            store
                .migrate()
                .await
                .map_err(|source| LlmStartError::Store { url, source })?;
        }
        let hasher = KeyHasher::new(config.api_key_pepper.as_deref());
        apply_seed(&store, &hasher, &config.seed)
            .await
            .map_err(LlmStartError::Seed)?;

        let (hot, publisher, channel) = match &config.redis {
            Some(redis) => {
                let conn = connect_redis(redis).await?;
                (
                    Some(HotCache::new(conn.clone(), redis.prefix.clone())),
                    Some(conn),
                    format!("{}invalidate", redis.prefix),
                )
            }
            None => (None, None, String::new()),
        };
        let budgets: Arc<dyn BudgetStore> = match (&publisher, &config.redis) {
            (Some(conn), Some(redis)) => Arc::new(RedisBudgets::new(
                conn.clone(),
                format!("{}budget:", redis.prefix),
            )),
            _ => Arc::new(LocalBudgets::default()),
        };
        let state = Arc::new(LlmState {
            budgets,
            budget_settings: config.budgets.clone(),
            scheduler: Scheduler::new(Capacity {
                global: config.admission.global_max_in_flight,
                queue_per_pool: config.admission.queue_per_pool,
                timeout: config.admission.timeout,
                brownout_after: config.admission.brownout_wait,
                order: config.admission.order,
            }),
            admission: config.admission.clone(),
            telemetry: Telemetry::start(&config.telemetry).map_err(LlmStartError::Telemetry)?,
            resolver: KeyResolver::new(hasher, hot.clone(), Arc::new(store.clone())),
            catalog: Catalog::default(),
            store,
            hot,
            publisher,
            channel,
        });
        state.reload_models().await;
        if let Some(redis) = &config.redis {
            crate::supervision::spawn(
                "invalidation",
                listen_for_changes(state.clone(), redis.url.clone()),
            );
        }
        crate::supervision::spawn(
            "ledger restore",
            crate::telemetry::restore_budgets(state.clone()),
        );
        Ok(state)
    }

    /// Called after every admin change: forgets cached principals of the
    /// given key hashes in Redis, refreshes this replica and tells the others.
    pub async fn changed(&self, key_hashes: &[String]) {
        if let Some(hot) = &self.hot {
            if let Err(e) = hot.forget(key_hashes).await {
                tracing::warn!("cannot purge the redis hot cache: {e}");
            }
        }
        self.refresh_local().await;
        if let Some(conn) = &self.publisher {
            let mut conn = conn.clone();
            let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg("changed")
                .query_async(&mut conn)
                .await;
            if let Err(e) = published {
                tracing::warn!("cannot notify other replicas of a change: {e}");
            }
        }
    }

    async fn refresh_local(&self) {
        self.resolver.invalidate_local();
        self.reload_models().await;
    }

    /// Reloads the catalog and sizes each model's admission pool (live:
    /// waiters are let in at once when a pool grew).
    async fn reload_models(&self) {
        if let Err(e) = self.catalog.reload(&self.store).await {
            tracing::error!("cannot load models: {e}");
        }
        for entry in self.catalog.list().iter() {
            self.scheduler
                .set_pool_size(&entry.model.name, entry.model.max_in_flight);
        }
    }
}

async fn connect_redis(redis: &RedisConfig) -> Result<ConnectionManager, LlmStartError> {
    let err = |source| LlmStartError::Redis {
        url: crate::config::redact_url(&redis.url),
        source,
    };
    let client = redis::Client::open(redis.url.as_str()).map_err(err)?;
    // Fail fast while Redis is away: the request path applies fail_open
    // rather than waiting for reconnects.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_millis(500))
        .set_number_of_retries(1)
        .set_max_delay(200);
    tokio::time::timeout(
        Duration::from_secs(5),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| {
        err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "connect timed out",
        )))
    })?
    .map_err(err)
}

/// Follows the invalidation channel, reconnecting with a pause when Redis
/// goes away; every message (and every reconnect, which may have missed
/// messages) refreshes this replica.
async fn listen_for_changes(state: Arc<LlmState>, url: String) {
    loop {
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&state.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(mut pubsub) => {
                state.refresh_local().await;
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    state.refresh_local().await;
                }
                tracing::warn!("redis invalidation channel closed; resubscribing");
            }
            Err(e) => tracing::warn!("cannot subscribe to redis invalidations: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Makes the store hold what the file declares, changing only what differs
/// (so restarts write no audit rows).
async fn apply_seed(store: &Store, hasher: &KeyHasher, seed: &Seed) -> Result<(), StoreError> {
    const ACTOR: &str = "seed";
    for group in &seed.groups {
        match store.group(&group.name).await {
            Ok(existing) if existing == *group => {}
            Ok(_) | Err(StoreError::NotFound(_)) => {
                store.put_group(ACTOR, group, true).await?;
            }
            Err(e) => return Err(e),
        }
    }
    for tenant in &seed.tenants {
        match store.tenant(&tenant.name).await {
            Ok(existing) if existing.spec == *tenant => {}
            Ok(existing) => {
                store.update_tenant(ACTOR, &existing.id, tenant).await?;
            }
            Err(StoreError::NotFound(_)) => {
                store.create_tenant(ACTOR, tenant).await?;
            }
            Err(e) => return Err(e),
        }
    }
    for model in &seed.models {
        match store.model(&model.name).await {
            Ok(existing) => {
                let mut stored = ModelSpec::of(&existing);
                stored.upstream_key = model.upstream_key.clone();
                let key_differs =
                    model.upstream_key.is_some() && model.upstream_key != existing.upstream_key;
                if stored != *model || key_differs {
                    store.put_model(ACTOR, model, false).await?;
                }
            }
            Err(StoreError::NotFound(_)) => {
                store.put_model(ACTOR, model, true).await?;
            }
            Err(e) => return Err(e),
        }
    }
    for key in &seed.keys {
        use obleth_filters::auth::PrincipalSource;
        let hash = hasher.hash(&key.secret);
        let known = store
            .principal_by_key_hash(&hash)
            .await
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        if known.is_none() {
            let tenant = store.tenant(&key.tenant).await?;
            let spec = KeySpec {
                name: key.name.clone(),
                disabled: false,
                weight: 100,
                expires_at: None,
                max_in_flight: None,
                tokens_per_minute: None,
                budget_tokens: None,
                budget_usd: None,
            };
            let prefix = obleth_filters::auth::display_prefix(&key.secret);
            store
                .create_key(ACTOR, &tenant.id, &spec, &prefix, &hash)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_periods_and_their_start_follow_the_tenants_timezone() {
        let mut t = Tenant {
            id: "t".into(),
            name: "t".into(),
            group: "default".into(),
            group_weight: 100,
            weight: 100,
            tokens_per_minute: 0,
            max_in_flight: None,
            status: obleth_filters::records::TenantStatus::Active,
            timezone: "Asia/Tokyo".into(),
            active_from: None,
            active_until: None,
            weekly_windows: vec![],
            budget_tokens: Some(1),
            budget_usd: None,
            budget_period: BudgetPeriod::Monthly,
            allowed_models: vec![],
        };
        let late_november_utc: Timestamp = "2026-11-30T16:30:00Z".parse().unwrap();
        assert_eq!(
            budget_period(&t, late_november_utc),
            "2026-12",
            "already December in Tokyo"
        );
        let tokyo_december: Timestamp = "2026-11-30T15:00:00Z".parse().unwrap();
        assert_eq!(
            period_start(&t, late_november_utc),
            tokyo_december.as_millisecond() as u64
        );
        t.timezone = "America/Los_Angeles".into();
        assert_eq!(budget_period(&t, late_november_utc), "2026-11");
        let la_november: Timestamp = "2026-11-01T07:00:00Z".parse().unwrap();
        assert_eq!(
            period_start(&t, late_november_utc),
            la_november.as_millisecond() as u64
        );
        t.budget_period = BudgetPeriod::Lifetime;
        assert_eq!(budget_period(&t, late_november_utc), "lifetime");
        assert_eq!(period_start(&t, late_november_utc), 0);
    }
}
