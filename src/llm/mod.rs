//! The LLM side of the gateway: the store, the key resolver, the model
//! catalog, the MCP servers and their sessions, and how changes made through the admin API reach every replica
//! (Redis pub/sub, or in-process without Redis).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use obleth_filters::admission::{Capacity, Scheduler};
use obleth_filters::auth::{HotCache, KeyHasher, KeyResolver};
use obleth_filters::budget::{BudgetStore, LocalBudgets, RedisBudgets, ReplicaAcks};
use obleth_filters::redis_link::{RedisLink, Topology};

use crate::config::{AdmissionSettings, BudgetSettings, Config, Seed};
use crate::store::secrets::UpstreamKeyCipher;
use crate::store::{KeySpec, McpServerSpec, ModelSpec, Store, StoreError};

mod body_buffer;
mod catalog;
mod ledger;
mod mcp_registry;
mod mcp_sessions;
mod scopes;
pub mod usage;

pub use body_buffer::{BodyBuffer, BufferFull, HeldBytes};
pub use catalog::{Catalog, CatalogModel, DirectUpstream};
pub use mcp_registry::{McpEndpoint, McpRegistry};
pub use mcp_sessions::McpSessions;
pub use scopes::{budget_period, key_scope, period_start, tenant_scope};
use usage::Telemetry;

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

/// Everything LLM routes need, shared by all listeners and the admin API.
pub struct LlmState {
    pub store: Store,
    pub resolver: KeyResolver,
    pub catalog: Catalog,
    /// The MCP servers behind `/mcp/{server}`.
    pub mcp: McpRegistry,
    /// Which key opened each MCP session.
    pub mcp_sessions: McpSessions,
    /// Redis-backed with Redis configured, in-process otherwise.
    pub budgets: Arc<dyn BudgetStore>,
    pub budget_settings: BudgetSettings,
    /// Fair admission; each enabled model is a pool of `max_in_flight`.
    pub scheduler: Scheduler,
    pub admission: AdmissionSettings,
    /// Bounds the LLM request bodies held in memory at once.
    pub body_buffer: BodyBuffer,
    pub telemetry: Telemetry,
    hot: Option<HotCache>,
    publisher: Option<RedisLink>,
    channel: String,
}

impl LlmState {
    /// Connects the store (migrating and seeding it as configured) and
    /// Redis, and loads the model catalog. With `take_over_by`, the usage
    /// log may still be held by the process this one upgrades from; it is
    /// opened once that process lets go of it, until that time.
    pub async fn start(
        config: &Config,
        take_over_by: Option<std::time::Instant>,
    ) -> Result<Arc<LlmState>, LlmStartError> {
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
        let hasher = KeyHasher::new(config.api_key_pepper.as_deref());
        let prepared = prepare_store(&store, config.store.migrate, &hasher, &config.seed).await;
        let store_pending = match prepared {
            Ok(()) => false,
            Err(source) if source.is_unreachable() => {
                tracing::warn!(store = %url, "store unreachable at start ({source}); not ready until it is, retrying in the background");
                crate::supervision::set_reachable("store", false);
                true
            }
            Err(source) => return Err(LlmStartError::Store { url, source }),
        };

        let (hot, publisher, channel) = match &config.redis {
            Some(redis) => {
                let link = RedisLink::open(redis.topology.clone())
                    .await
                    .map_err(|source| LlmStartError::Redis {
                        url: redis_target(&redis.topology),
                        source,
                    })?;
                (
                    Some(HotCache::new(link.clone(), redis.prefix.clone())),
                    Some(link),
                    format!("{}invalidate", redis.prefix),
                )
            }
            None => (None, None, String::new()),
        };
        let budgets: Arc<dyn BudgetStore> = match (&publisher, &config.redis) {
            (Some(link), Some(redis)) => Arc::new(
                RedisBudgets::new(link.clone(), format!("{}budget:", redis.prefix))
                    .with_lease_ttl(config.budgets.lease_ttl)
                    .with_replica_acks(ReplicaAcks {
                        replicas: redis.replica_acks,
                        timeout: redis.replica_ack_timeout,
                    }),
            ),
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
            body_buffer: BodyBuffer::new(config.admission.max_buffered_body),
            telemetry: open_usage_log(config, take_over_by).await?,
            resolver: KeyResolver::new(hasher, hot.clone(), Arc::new(store.clone())),
            catalog: Catalog::default(),
            mcp: McpRegistry::default(),
            mcp_sessions: McpSessions::new(
                publisher
                    .clone()
                    .zip(config.redis.as_ref().map(|r| r.prefix.clone())),
            ),
            store,
            hot,
            publisher,
            channel,
        });
        if store_pending {
            crate::supervision::spawn(
                "store",
                wait_for_store(
                    state.clone(),
                    url,
                    config.store.migrate,
                    config.seed.clone(),
                ),
            );
        } else {
            state.reload_models().await;
        }
        if let Some(link) = state.publisher.clone() {
            crate::supervision::spawn("invalidation", listen_for_changes(state.clone(), link));
        }
        if let Some(ledger) = state.telemetry.clickhouse.clone() {
            crate::supervision::spawn(
                "ledger restore",
                ledger::restore_budgets(
                    state.store.clone(),
                    state.budgets.clone(),
                    ledger,
                    state.telemetry.wal.clone(),
                    state.telemetry.schema_ready.clone(),
                    state.publisher.as_ref().map(RedisLink::watch),
                ),
            );
        }
        Ok(state)
    }

    /// Whether budgets can be reserved right now: Redis answers (its
    /// breaker is closed), or budgets are in-process.
    pub fn budget_store_up(&self) -> bool {
        self.publisher.as_ref().is_none_or(RedisLink::is_up)
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
        if let Some(mut conn) = self.publisher.as_ref().and_then(RedisLink::connection) {
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

    /// Reloads the catalog and the MCP servers and sizes each model's and
    /// bounded MCP server's admission pool (live: waiters are let in at
    /// once when a pool grew).
    async fn reload_models(&self) {
        if let Err(e) = self.catalog.reload(&self.store).await {
            tracing::error!("cannot load models: {e}");
        }
        for entry in self.catalog.list().iter() {
            self.scheduler
                .set_pool_size(&entry.model.name, entry.model.max_in_flight);
        }
        match self.mcp.reload(&self.store).await {
            Ok(pools) => {
                for (pool, size) in pools {
                    self.scheduler.set_pool_size(&pool, size);
                }
            }
            Err(e) => tracing::error!("cannot load MCP servers: {e}"),
        }
    }
}

/// Migrates (if asked) and seeds the store: what must happen before the
/// catalog and keys can be read from it.
async fn prepare_store(
    store: &Store,
    migrate: bool,
    hasher: &KeyHasher,
    seed: &Seed,
) -> Result<(), StoreError> {
    if migrate {
        store.migrate().await?;
    }
    apply_seed(store, hasher, seed).await
}

/// Retries [`prepare_store`] with backoff while the store is unreachable,
/// then loads the catalog and lets `/readyz` report ready.
async fn wait_for_store(state: Arc<LlmState>, url: String, migrate: bool, seed: Seed) {
    let mut pause = Duration::from_millis(500);
    loop {
        tokio::time::sleep(pause).await;
        let hasher = state.resolver.hasher();
        match prepare_store(&state.store, migrate, hasher, &seed).await {
            Ok(()) => break,
            Err(e) if e.is_unreachable() => pause = (pause * 2).min(Duration::from_secs(15)),
            Err(e) => {
                tracing::error!(store = %url, "store reachable but not usable: {e}; retrying");
                pause = Duration::from_secs(15);
            }
        }
    }
    state.reload_models().await;
    crate::supervision::set_reachable("store", true);
    tracing::info!(store = %url, "store reachable; ready");
}

/// Where Redis is, for errors, without credentials.
fn redis_target(topology: &Topology) -> String {
    let urls = |list: &[String]| {
        list.iter()
            .map(|u| crate::config::redact_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match topology {
        Topology::Standalone { url } => crate::config::redact_url(url),
        Topology::Sentinel {
            sentinels,
            master_name,
            ..
        } => format!("master {master_name:?} of sentinels {}", urls(sentinels)),
        Topology::Cluster { nodes, .. } => format!("cluster of {}", urls(nodes)),
    }
}

/// Follows the invalidation channel, resubscribing with a pause when its
/// server goes away and whenever Redis comes back (after a failover the
/// channel may live on another server); every message (and every
/// resubscription, which may have missed messages) refreshes this replica.
async fn listen_for_changes(state: Arc<LlmState>, link: RedisLink) {
    let mut up = link.watch();
    loop {
        match link.subscribe(&state.channel).await {
            Ok(mut pubsub) => {
                state.refresh_local().await;
                up.borrow_and_update();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(_) => state.refresh_local().await,
                            None => {
                                link.connection_lost();
                                tracing::warn!("redis invalidation channel closed; resubscribing");
                                break;
                            }
                        },
                        changed = up.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if *up.borrow_and_update() {
                                break;
                            }
                        }
                    }
                }
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
    for server in &seed.mcp_servers {
        match store.mcp_server(&server.name).await {
            Ok(existing) => {
                let header_differs =
                    server.auth_header.is_some() && server.auth_header != existing.spec.auth_header;
                let without_header = McpServerSpec {
                    auth_header: None,
                    ..server.clone()
                };
                if McpServerSpec::of(&existing) != without_header || header_differs {
                    store.put_mcp_server(ACTOR, server, false).await?;
                }
            }
            Err(StoreError::NotFound(_)) => {
                store.put_mcp_server(ACTOR, server, true).await?;
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

/// Opens the usage log, waiting until `take_over_by` for the process being
/// upgraded from to drain and release it.
async fn open_usage_log(
    config: &Config,
    take_over_by: Option<std::time::Instant>,
) -> Result<Telemetry, LlmStartError> {
    let mut said = false;
    loop {
        match Telemetry::start(&config.telemetry) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && take_over_by.is_some_and(|t| std::time::Instant::now() < t) =>
            {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!("waiting for the process being upgraded from to drain and release the usage log");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            opened => return opened.map_err(LlmStartError::Telemetry),
        }
    }
}
