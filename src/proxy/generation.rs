//! The live configuration: the generation of routes and pools requests see,
//! swapped whole on reload, and the state every listener shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::watch;

use crate::config::{Action, PoolConfig, RouteConfig};
use crate::edge::access_log::AccessLog;
use crate::edge::pool::{LivePools, Pool};
use crate::edge::rate_limit::RateLimiter;
use crate::edge::routing::{Route, RouteTable};
use crate::llm::LlmState;
use crate::metrics::RouteMetrics;
use crate::otel::Tracer;

/// Routes and pools of one configuration; a reload builds a new generation
/// and swaps it in whole, while requests in flight keep the one they started
/// with.
#[derive(Debug)]
pub struct Generation {
    pub routes: RouteTable,
    pub pools: Vec<Arc<Pool>>,
    /// Counts requests that matched no route.
    pub(super) unmatched: RouteMetrics,
}

impl Generation {
    pub fn build(
        routes: Vec<RouteConfig>,
        pools: Vec<PoolConfig>,
        previous: Option<&Generation>,
    ) -> Self {
        let pools: Vec<Arc<Pool>> = pools
            .into_iter()
            .map(|config| {
                let old = previous.and_then(|g| g.pool(&config.name));
                Arc::new(Pool::new(config, old.map(|p| &**p)))
            })
            .collect();
        let routes = routes
            .into_iter()
            .map(|config| {
                let pool = match &config.action {
                    Action::Proxy(p) => pools.iter().find(|pool| pool.name() == p.pool).cloned(),
                    _ => None,
                };
                Arc::new(Route {
                    metrics: RouteMetrics::new(&config.name),
                    rate_limiter: config.rate_limit.clone().map(RateLimiter::new),
                    config,
                    pool,
                })
            })
            .collect();
        Self {
            routes: RouteTable::new(routes),
            pools,
            unmatched: RouteMetrics::new("-"),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name() == name)
    }
}

/// State shared by every listener and the background services.
pub struct Shared {
    pub(super) generation: ArcSwap<Generation>,
    pools: watch::Sender<Arc<[Arc<Pool>]>>,
    pub(super) trusted_proxies: Vec<IpNet>,
    pub access_log: AccessLog,
    pub(super) in_flight: AtomicUsize,
    /// Started only when the configuration declares an `llm:` route.
    pub llm: Option<Arc<LlmState>>,
    /// Set when `tracing.endpoint` is configured.
    pub(super) tracer: Option<Tracer>,
}

impl Shared {
    pub fn new(
        generation: Generation,
        trusted_proxies: Vec<IpNet>,
        access_log: AccessLog,
        llm: Option<Arc<LlmState>>,
        tracer: Option<Tracer>,
    ) -> Self {
        let (pools, _) = watch::channel(generation.pools.clone().into());
        Self {
            generation: ArcSwap::new(Arc::new(generation)),
            pools,
            trusted_proxies,
            access_log,
            in_flight: AtomicUsize::new(0),
            llm,
            tracer,
        }
    }

    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Builds the next generation from the current one and makes it the one
    /// new requests see. The live pools' watch is held for writing while it
    /// is built, and the admin API changes a server only while it holds the
    /// watch for reading: a change lands on the old pools before the new
    /// ones copy it, or on the new ones, never on pools already replaced.
    pub fn rebuild(&self, build: impl FnOnce(&Generation) -> Generation) {
        self.pools.send_modify(|pools| {
            let generation = build(&self.current());
            *pools = generation.pools.clone().into();
            self.generation.store(Arc::new(generation));
        });
    }

    /// The live pools, for health checks and the admin API.
    pub fn watch_pools(&self) -> LivePools {
        self.pools.subscribe()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
