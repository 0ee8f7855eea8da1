//! The MCP servers `/mcp/{server}` reaches, each with its own upstream pool
//! and the credential injected on the way to it; reloaded whole after
//! every change, like the model catalog.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};

use super::catalog::{direct_upstream, DirectUpstream};
use crate::store::{split_auth_header, McpServer, Store, StoreError};

/// An MCP server ready to route to.
#[derive(Debug)]
pub struct McpEndpoint {
    pub name: String,
    /// A disabled server stays known, so its requests are refused as
    /// disabled rather than as unknown.
    pub enabled: bool,
    /// Tools any tenant may use; empty: all the server offers.
    pub allowed_tools: Vec<String>,
    /// `None` when the URL cannot be served (logged at reload): 503.
    pub upstream: Option<DirectUpstream>,
    /// The URL's path and query as given, requests' target upstream.
    pub target: http::uri::PathAndQuery,
    /// The header sent in place of the client's credential.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// The server's admission pool (`mcp:{name}`) and its size, when the
    /// server has a `max_in_flight`.
    pub admission: Option<(String, u32)>,
}

impl McpEndpoint {
    /// Whether the server's own allowlist lets `tool` through.
    pub fn offers(&self, tool: &str) -> bool {
        self.allowed_tools.is_empty() || self.allowed_tools.iter().any(|t| t == tool)
    }
}

/// The registered MCP servers by name, swapped whole on every reload.
#[derive(Default)]
pub struct McpRegistry {
    by_name: ArcSwap<HashMap<String, Arc<McpEndpoint>>>,
}

impl McpRegistry {
    pub fn lookup(&self, name: &str) -> Option<Arc<McpEndpoint>> {
        self.by_name.load().get(name).cloned()
    }

    /// Reloads every server; returns the admission pools to size.
    pub(super) async fn reload(&self, store: &Store) -> Result<Vec<(String, u32)>, StoreError> {
        let previous = self.by_name.load_full();
        let mut by_name = HashMap::new();
        for server in store.mcp_servers().await? {
            let old = previous.get(&server.spec.name);
            let entry = endpoint(server, old.and_then(|o| o.upstream.as_ref())).await;
            by_name.insert(entry.name.clone(), Arc::new(entry));
        }
        let pools = by_name
            .values()
            .filter_map(|e| e.admission.clone())
            .collect();
        self.by_name.store(Arc::new(by_name));
        Ok(pools)
    }
}

async fn endpoint(server: McpServer, old: Option<&DirectUpstream>) -> McpEndpoint {
    let spec = server.spec;
    let upstream = match direct_upstream(format!("mcp:{}", spec.name), &spec.url, old).await {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(mcp_server = %spec.name, "url {} cannot be served: {e}", spec.url);
            None
        }
    };
    let credential = spec.auth_header.as_deref().and_then(|h| {
        let (name, value) = split_auth_header(h)?;
        let parsed = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value));
        match parsed {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                Some((n, v))
            }
            _ => {
                tracing::warn!(mcp_server = %spec.name, "auth_header is not a valid header; not sent");
                None
            }
        }
    });
    let target = spec
        .url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().cloned())
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    McpEndpoint {
        target,
        admission: spec
            .max_in_flight
            .map(|n| (format!("mcp:{}", spec.name), n)),
        name: spec.name,
        enabled: spec.enabled,
        allowed_tools: spec.allowed_tools,
        upstream,
        credential,
    }
}
