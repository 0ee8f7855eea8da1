//! The operator-facing HTTP endpoints: the admin listener (`/healthz`,
//! `/readyz`, the admin API and the dashboard under `/ui/`) and the metrics
//! listener (`/metrics`). Both are small axum
//! routers run as Pingora background services on sockets bound before the
//! server starts, so a port in use fails start-up with a clear error. The
//! admin API lives in one file per resource, wired together in [`api`].

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::edge::certificates::CertificateRegistry;
use crate::edge::pool::LivePools;
use crate::llm::LlmState;

/// The edge plane's runtime state the admin API shows and changes, with or
/// without the LLM plane: the pools' servers and the TLS certificates.
#[derive(Clone)]
pub struct EdgeRuntime {
    pub pools: LivePools,
    pub certificates: CertificateRegistry,
}

pub mod api;
mod audit;
mod budgets;
mod capacity;
mod certificates;
pub mod dashboard;
mod doc;
pub mod error;
mod groups;
mod keys;
mod mcp_servers;
mod models;
mod pools;
mod tenants;
mod usage;

/// The admin API checks model pools against the pools requests see.
impl api::PoolDirectory for LivePools {
    fn pool_names(&self) -> Vec<String> {
        self.borrow().iter().map(|p| p.name().to_string()).collect()
    }
}

/// An axum router served on a pre-bound socket until the process exits, or
/// until it hands its ports to a new binary.
pub struct HttpEndpoint {
    name: &'static str,
    listener: Mutex<Option<TcpListener>>,
    router: Router,
    /// Turns true when a new process takes over (`obleth run --upgrade`):
    /// the port is closed for it to bind.
    handover: tokio::sync::watch::Receiver<bool>,
}

impl HttpEndpoint {
    /// Binds `addr`; with `retry_until`, a port still held (by the process
    /// being upgraded from) is tried again until then.
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        router: Router,
        handover: tokio::sync::watch::Receiver<bool>,
        retry_until: Option<std::time::Instant>,
    ) -> std::io::Result<Self> {
        let listener = loop {
            match TcpListener::bind(addr) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && retry_until.is_some_and(|t| std::time::Instant::now() < t) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                bound => {
                    break bound.map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{name} listener on {addr}: {e}"))
                    })?
                }
            }
        };
        listener.set_nonblocking(true)?;
        Ok(Self {
            name,
            listener: Mutex::new(Some(listener)),
            router,
            handover,
        })
    }
}

#[async_trait]
impl BackgroundService for HttpEndpoint {
    /// Serves until the process exits, through the drain: `/readyz` must
    /// say `draining` to the load balancer while requests in flight finish.
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{} listener: {e}", self.name);
                return;
            }
        };
        let mut handover = self.handover.clone();
        let handed_over = async move {
            if handover.wait_for(|h| *h).await.is_err() {
                // Nobody can announce a hand-over: serve to the end.
                std::future::pending::<()>().await;
            }
        };
        let service = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(handed_over)
            .await
        {
            tracing::error!("{} listener: {e}", self.name);
        }
    }
}

/// `/healthz` answers while the process runs; `/readyz` only while it
/// accepts traffic (not before the listeners start, not while draining,
/// not once a background task died); everything under `/api/v1` is the
/// token-protected admin API: the pools' servers and the certificates always, the other
/// resources (tenants, keys, models, budgets, usage) only when the LLM
/// plane runs; `/ui/` is the dashboard, when it runs.
pub fn admin_router(
    llm: Option<Arc<LlmState>>,
    edge: EdgeRuntime,
    admin_token: &str,
    dashboard: Option<dashboard::DashboardConfig>,
) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let api = api::router(llm.clone(), edge, admin_token);
    let probes = match dashboard {
        Some(config) => probes.merge(dashboard::router(config, api.clone(), admin_token, llm)),
        None => probes,
    };
    probes.merge(api)
}

async fn readyz() -> (StatusCode, String) {
    match crate::supervision::readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `/metrics`, with the admission and telemetry figures brought up to
/// date first.
pub fn metrics_router(llm: Option<Arc<crate::llm::LlmState>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                metrics_text(llm.as_ref()),
            )
        }),
    )
}

/// The Prometheus exposition, with the figures read at scrape time brought
/// up to date first.
fn metrics_text(llm: Option<&Arc<LlmState>>) -> String {
    if let Some(llm) = llm {
        crate::metrics::observe_admission(&llm.scheduler.snapshot());
        crate::metrics::observe_telemetry(&llm.telemetry.wal.stats());
        if let Some(stats) = llm.budgets.lease_stats() {
            crate::metrics::observe_budgets(&stats);
        }
        crate::metrics::FAMILIES
            .budget_store_up
            .set(i64::from(llm.budget_store_up()));
    }
    crate::metrics::render()
}
