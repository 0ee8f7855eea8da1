//! The model catalog: enabled models by name and alias, each with its
//! upstream (a configured pool, or a pool of its own built from `base_url`),
//! reloaded whole after every change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use obleth_filters::records::Model;

use crate::config::{Algorithm, PoolConfig, ServerConfig, Timeouts, UpstreamTls};
use crate::edge::pool::Pool;
use crate::store::{Store, StoreError};

/// A model ready to route to.
#[derive(Debug)]
pub struct CatalogModel {
    pub model: Model,
    /// Set for models served from a base URL instead of a configured pool.
    pub direct: Option<DirectUpstream>,
    /// The model's time-to-first-token histogram, looked up once here
    /// rather than by label on every request.
    pub time_to_first_token: prometheus::Histogram,
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

    pub(super) async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let previous = self.by_name.load_full();
        let mut by_name = HashMap::new();
        let mut listed = Vec::new();
        for model in store.models().await?.into_iter().filter(|m| m.enabled) {
            let direct = match &model.base_url {
                Some(url) => {
                    let old = previous.get(&model.name).and_then(|m| m.direct.as_ref());
                    match direct_upstream(format!("model:{}", model.name), url, old).await {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!(model = %model.name, "model left out: base_url {url}: {e}");
                            continue;
                        }
                    }
                }
                None => None,
            };
            let time_to_first_token = crate::metrics::FAMILIES
                .time_to_first_token
                .with_label_values(&[model.name.as_str()]);
            let entry = Arc::new(CatalogModel {
                model,
                direct,
                time_to_first_token,
            });
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

/// Why a model's `base_url` (or an MCP server's `url`) cannot be served
/// (the model is left out of the catalog and the reason logged).
#[derive(Debug, thiserror::Error)]
pub enum BaseUrlError {
    #[error("not a URL: {0}")]
    NotAUrl(#[from] http::uri::InvalidUri),
    #[error("scheme must be http or https")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("cannot resolve: {0}")]
    Resolve(#[from] std::io::Error),
    #[error("resolves to no address")]
    NoAddress,
    #[error("the authority is not a valid Host header: {0}")]
    Host(#[from] http::header::InvalidHeaderValue),
}

/// A pool of its own (named `pool_name`) for an upstream named by URL; an
/// `old` one keeps its connections' health state.
pub(super) async fn direct_upstream(
    pool_name: String,
    url: &str,
    old: Option<&DirectUpstream>,
) -> Result<DirectUpstream, BaseUrlError> {
    let uri: http::Uri = url.parse()?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(BaseUrlError::Scheme),
    };
    let host = uri.host().ok_or(BaseUrlError::NoHost)?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let address = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or(BaseUrlError::NoAddress)?;
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let config = PoolConfig {
        name: pool_name,
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
        host: HeaderValue::from_str(&authority)?,
    })
}
