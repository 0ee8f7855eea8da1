//! The per-request context carried across the phases.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::prelude::*;
use pingora::ErrorType;
use smallvec::SmallVec;

use super::llm_route;
use super::Shared;
use crate::config::ClientLimits;
use crate::edge::forwarding::RequestId;
use crate::edge::pool::{InFlight, Pool};
use crate::edge::routing::Route;
use crate::metrics::FAMILIES;
use crate::otel::otlp::KeyValue;
use crate::otel::RequestTrace;

/// Counts a request as in flight for as long as it lives.
pub(super) struct Active(Arc<Shared>);

impl Active {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        FAMILIES.in_flight.inc();
        Self(shared.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        FAMILIES.in_flight.dec();
    }
}

/// Per-request state carried across the phases.
pub struct RequestCtx {
    pub(super) _active: Active,
    pub(super) started: Instant,
    pub(super) route: Option<Arc<Route>>,
    /// The pool attempts go to: the route's, or the requested model's.
    pub(super) pool: Option<Arc<Pool>>,
    /// Set on LLM routes once the request passed auth and parsing; boxed,
    /// as the context is moved with Pingora's request future on every
    /// request and a plain proxy request has none.
    pub(super) llm: Option<Box<llm_route::LlmCall>>,
    /// Set on `/mcp/{server}` paths of LLM routes; boxed like `llm`.
    pub(super) mcp: Option<Box<super::mcp_route::McpCall>>,
    /// On LLM routes, the key's principal once resolved and the model once
    /// known: a request refused after that still leaves a usage record.
    pub(super) caller: Option<Arc<obleth_filters::records::Principal>>,
    pub(super) model: Option<String>,
    /// From the request head to the upstream's response head.
    pub(super) first_byte: Option<Duration>,
    pub(super) request_id: RequestId,
    /// Upstream attempts made so far.
    pub(super) attempts: usize,
    /// Servers this request already tried, skipped by retries.
    pub(super) tried: SmallVec<[usize; 4]>,
    pub(super) server: Option<InFlight>,
    pub(super) attempt_started: Option<Instant>,
    pub(super) upstream_started: Option<Instant>,
    pub(super) connect_time: Option<Duration>,
    pub(super) response_time: Option<Duration>,
    /// The status `fail_to_proxy` chose, when the request failed.
    pub(super) error_status: u16,
    pub(super) total_timeout_hit: bool,
    /// Request body bytes received so far, for the listener's minimum rate.
    pub(super) body_bytes: u64,
    pub(super) limits: ClientLimits,
    /// Set while the request is traced (sampled, with tracing on); boxed
    /// like `llm`, as most requests have none.
    pub(super) trace: Option<Box<RequestTrace>>,
}

impl RequestCtx {
    /// When a step of the request path starts, if the request is traced:
    /// an untraced request reads no clock for its steps.
    pub(crate) fn step_started(&self) -> Option<Instant> {
        self.trace.as_ref().map(|_| Instant::now())
    }

    /// Records a step that began at `started` (from [`Self::step_started`])
    /// and ends now.
    pub(crate) fn trace_step(
        &mut self,
        name: &'static str,
        started: Option<Instant>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        if let (Some(trace), Some(started)) = (self.trace.as_mut(), started) {
            trace.step(name, started, attributes());
        }
    }

    /// Refuses a request body that trickles in: once it has taken longer
    /// than `http_request`, it must average `min_body_rate` bytes a second.
    pub(crate) fn check_body_rate(&mut self, received: usize) -> Result<()> {
        self.body_bytes += received as u64;
        let rate = self.limits.min_body_rate;
        let elapsed = self.started.elapsed();
        if rate > 0
            && elapsed > self.limits.http_request
            && (self.body_bytes as f64) < rate as f64 * elapsed.as_secs_f64()
        {
            FAMILIES
                .connections_closed
                .with_label_values(&["slow_body"])
                .inc();
            return Err(Error::explain(
                ErrorType::HTTPStatus(408),
                format!("request body slower than {rate} bytes/s"),
            ));
        }
        Ok(())
    }
}
