//! The `ProxyHttp` implementation: the request path, phase by phase.
//!
//! `request_filter` starts the request's trace, matches a route, runs the
//! edge gates (`deny_source`, the rate limit: `gates.rs`) and answers
//! `respond` / `redirect` routes itself; `upstream_peer` picks a server of
//! the route's pool; `upstream_request_filter` rewrites the request and adds
//! forwarding headers and `traceparent`; the response phases edit headers
//! and enforce the total timeout; `fail_to_proxy` maps errors to statuses in
//! one place; `logging` counts the request, writes its access log line and
//! ends its trace (`trace.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::{ErrorSource, ErrorType};
use smallvec::SmallVec;

mod context;
mod errors;
mod gates;
mod generation;
mod llm_route;
mod mcp_route;
mod preset_body;
mod trace;

use context::Active;
pub use context::RequestCtx;
use errors::{reason, status_for, termination};
pub use generation::{Generation, Shared};
use preset_body::PresetBody;

use crate::config::Action;
use crate::config::{Algorithm, ClientLimits};
use crate::edge::access_log::{version_text, AccessRecord};
use crate::edge::client_connection::HeadGuard;
use crate::edge::forwarding::{
    add_forwarding_headers, carries_hop_by_hop, client_address, RequestId, X_REQUEST_ID_WIRE,
};
use crate::edge::pool::balance_key;
use crate::edge::rate_limit::RetryAfter;
use crate::edge::routing::RequestView;

/// The proxy of one listener.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: String,
    scheme: &'static str,
    limits: ClientLimits,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>, listener: String, tls: bool, limits: ClientLimits) -> Self {
        Self {
            shared,
            listener,
            scheme: if tls { "https" } else { "http" },
            limits,
        }
    }

    fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.shared.trusted_proxies.iter().any(|n| n.contains(&ip)))
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes a complete response that obleth itself produces.
pub(crate) async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &HeaderValue,
    body: Bytes,
    request_id: &RequestId,
    extra: impl IntoIterator<Item = (HeaderName, String)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(X_REQUEST_ID_WIRE, request_id.header().clone())?;
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    let empty = body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Why a request's Host is unusable (RFC 9112 §3.2): an HTTP/1.1 request
/// must carry exactly one Host header; HTTP/1.0 may carry none; HTTP/2
/// names the authority in the URI.
fn host_problem(req: &RequestHeader) -> Option<&'static str> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("request has more than one Host header"),
        (None, _) if req.version == http::Version::HTTP_11 => {
            Some("HTTP/1.1 request has no Host header")
        }
        _ => None,
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// obleth passes bodies through as they are; without this override
    /// Pingora would run a (disabled) compression module on every response.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _active: Active::new(&self.shared),
            started: Instant::now(),
            route: None,
            pool: None,
            llm: None,
            mcp: None,
            request_id: RequestId::default(),
            attempts: 0,
            tried: SmallVec::new(),
            server: None,
            attempt_started: None,
            upstream_started: None,
            connect_time: None,
            response_time: None,
            caller: None,
            model: None,
            first_byte: None,
            error_status: 0,
            total_timeout_hit: false,
            body_bytes: 0,
            limits: self.limits,
            trace: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(guard) = HeadGuard::of(session.stream()) {
            guard.accepted();
        }
        // RFC 9112 §9.3.2: pipelined requests are served one after another,
        // in order, instead of being dropped with the connection.
        session.set_pipelining_enabled(true);
        session.set_read_timeout(Some(self.limits.client));
        // Pingora keeps an HTTP/1.1 connection without an idle limit
        // (`Some(0)`); an explicit close or HTTP/1.0 (`None`) stays as it is.
        if crate::supervision::closing_connections() {
            session.set_keepalive(None);
        } else if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(self.limits.http_keep_alive.as_secs().max(1)));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = RequestId::of(session.req_header());
        if let Some(tracer) = &self.shared.tracer {
            ctx.trace = tracer.begin(&session.req_header().headers).map(Box::new);
        }
        if let Some(problem) = host_problem(session.req_header()) {
            session.set_keepalive(None);
            let text = HeaderValue::from_static("text/plain");
            let body = Bytes::from(format!("400 {problem}\n"));
            respond(session, 400, &text, body, &ctx.request_id, None).await?;
            return Ok(true);
        }
        let generation = self.shared.generation.load();
        let mut view = RequestView::new(session.req_header());
        if generation.routes.needs_client() {
            view.client = client_address(
                client_ip(session),
                session.req_header(),
                &self.shared.trusted_proxies,
            );
        }
        let Some(route) = generation.routes.find(&view).cloned() else {
            drop(view);
            let text = HeaderValue::from_static("text/plain");
            respond(
                session,
                404,
                &text,
                Bytes::from_static(b"404 no route matches this request\n"),
                &ctx.request_id,
                None,
            )
            .await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        if route.denies(view.client) {
            drop(view);
            return gates::deny_source(session, ctx, &route).await;
        }
        if let Some(limiter) = &route.rate_limiter {
            if let Err(RetryAfter(seconds)) = limiter.check(session.req_header(), view.client) {
                drop(view);
                route.metrics.rate_limited.inc();
                return gates::rate_limited(session, ctx, &route, seconds).await;
            }
        }
        match &route.config.action {
            Action::Proxy(_) => {
                drop(view);
                if route.pool.as_ref().is_some_and(|p| p.config.retries > 0) {
                    session.enable_retry_buffering();
                }
                ctx.pool = route.pool.clone();
                Ok(false)
            }
            Action::Llm(action) => {
                drop(view);
                let Some(llm) = &self.shared.llm else {
                    // A reload cannot add the first `llm:` route (server.rs).
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "the LLM plane is not running",
                    ));
                };
                let path = session.req_header().uri.path();
                if let Some(server) = mcp_route::server_in_path(path).map(str::to_owned) {
                    return mcp_route::request_filter(llm, &server, action, session, ctx).await;
                }
                let generation = self.shared.current();
                llm_route::request_filter(llm, &generation, action, session, ctx).await
            }
            Action::Redirect { status, location } => {
                let location = location.render(&view, self.scheme);
                drop(view);
                let text = HeaderValue::from_static("text/plain");
                respond(
                    session,
                    *status,
                    &text,
                    Bytes::new(),
                    &ctx.request_id,
                    Some((header::LOCATION, location)),
                )
                .await?;
                Ok(true)
            }
            Action::Respond(fixed) => {
                drop(view);
                respond(
                    session,
                    fixed.status,
                    &fixed.content_type,
                    fixed.body.clone(),
                    &ctx.request_id,
                    None,
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "proxy route without a pool")
        })?;
        if let Some(call) = ctx.llm.as_mut() {
            call.body_sent = false;
        }
        if let Some(call) = ctx.mcp.as_mut() {
            call.body_sent = false;
        }
        if ctx.attempts > 0 {
            pool.metrics.retries.inc();
        }
        ctx.attempts += 1;
        let key = match &pool.config.algorithm {
            Algorithm::ConsistentHash(key) => {
                balance_key(session.req_header(), client_ip(session), key)
            }
            _ => Vec::new(),
        };
        // Release the previous attempt's server before choosing the next.
        ctx.server = None;
        let Some(claim) = pool.select(&ctx.tried, &key) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("no server of pool {} can take the request", pool.name()),
            ));
        };
        ctx.tried.push(claim.index());
        let mut peer = Box::new(claim.server().peer().clone());
        if !carries_hop_by_hop(session.req_header()) {
            // Nothing for Pingora's upstream-request sanitizing to strip:
            // skip its pass over every header.
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        ctx.server = Some(claim);
        let now = Instant::now();
        ctx.attempt_started = Some(now);
        ctx.upstream_started.get_or_insert(now);
        ctx.connect_time = None;
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connect_time = ctx.attempt_started.map(|t| t.elapsed());
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(claim)) = (ctx.pool.as_ref(), ctx.server.as_ref()) {
            pool.metrics.connect_failed.inc();
            pool.mark_connect_failure(claim.index());
            e.set_retry(ctx.attempts <= pool.config.retries);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(pool) = ctx.pool.as_ref() else {
            e.set_retry(false);
            return e;
        };
        pool.metrics.failed.inc();
        // Retry only while the client has seen nothing, the request body can
        // be replayed, and repeating the request is safe or allowed.
        let retry = session.response_written().is_none()
            && ctx.attempts <= pool.config.retries
            && !ctx.total_timeout_hit
            && *e.esource() != ErrorSource::Downstream
            && !session.as_ref().retry_buffer_truncated()
            && (session.req_header().method.is_idempotent() || pool.config.retry_non_idempotent);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        let proxy = match &route.config.action {
            Action::Proxy(action) => Some(action),
            _ => None,
        };

        if let Some((from, to)) = proxy.and_then(|a| a.rewrite_prefix.as_ref()) {
            let path = upstream.uri.path();
            if let Some(rest) = path.strip_prefix(from.as_str()) {
                let mut new = String::with_capacity(to.len() + rest.len() + 16);
                new.push_str(to);
                if to.ends_with('/') {
                    new.push_str(rest.strip_prefix('/').unwrap_or(rest));
                } else if !rest.is_empty() && !rest.starts_with('/') {
                    new.push('/');
                    new.push_str(rest);
                } else {
                    new.push_str(rest);
                }
                if let Some(q) = upstream.uri.query() {
                    new.push('?');
                    new.push_str(q);
                }
                let uri = new.parse::<http::Uri>().map_err(|e| {
                    Error::because(ErrorType::InternalError, "rewritten path is not a URI", e)
                })?;
                upstream.set_uri(uri);
            }
        }

        if let Some(host) = route
            .pool
            .as_ref()
            .and_then(|p| p.config.host_header.as_ref())
        {
            upstream.insert_header(header::HOST, host)?;
        } else if !upstream.headers.contains_key(header::HOST) {
            // An HTTP/1.0 client may omit Host; the upstream speaks
            // HTTP/1.1, which requires one: name the server.
            if let Some(server) = ctx.server.as_ref() {
                upstream.insert_header(header::HOST, server.server().config.name.as_str())?;
            }
        }

        let ip = client_ip(session);
        add_forwarding_headers(
            upstream,
            session.req_header(),
            ip,
            self.is_trusted(ip),
            self.scheme,
            &ctx.request_id,
        )?;

        if let Some(action) = proxy {
            action.request_headers.apply_to_request(upstream)?;
        }
        if let Some(call) = &ctx.llm {
            call.rewrite_upstream_request(upstream)?;
        }
        if let Some(call) = &ctx.mcp {
            call.rewrite_upstream_request(upstream)?;
        }
        if let Some(trace) = &ctx.trace {
            upstream.insert_header("traceparent", trace.upstream_traceparent())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.response_time = ctx.attempt_started.map(|t| t.elapsed());
        ctx.first_byte = Some(ctx.started.elapsed());
        if let Some(pool) = ctx.pool.as_ref() {
            pool.metrics.ok.inc();
        }
        check_total(ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The upstream answered: no attempt will need the body again.
        PresetBody::remove(session);
        if let Some(call) = ctx.llm.as_mut() {
            call.wait_for_intent().await;
        }
        if let Some(call) = ctx.mcp.as_mut() {
            call.wait_for_intents().await;
        }
        if let Some(Action::Proxy(action)) = ctx.route.as_ref().map(|r| &r.config.action) {
            action.response_headers.apply_to_response(response)?;
        }
        response.insert_header(X_REQUEST_ID_WIRE, ctx.request_id.header().clone())?;
        if let Some(call) = ctx.llm.as_mut() {
            for (name, value) in call.response_headers() {
                response.insert_header(name, value)?;
            }
            let content_type = response
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes());
            call.start_response(response.status.as_u16(), content_type);
            if call.strips_usage() {
                // The body changes length when the usage event is removed.
                response.remove_header(&header::CONTENT_LENGTH);
            }
        }
        if let (Some(call), Some(caller), Some(llm)) =
            (ctx.mcp.as_mut(), &ctx.caller, &self.shared.llm)
        {
            let method = &session.req_header().method;
            call.start_response(llm, caller, method, response).await;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(call) = ctx.llm.as_mut() {
            call.observe_response(body, end_of_stream);
        }
        if let Some(call) = ctx.mcp.as_mut() {
            call.observe_response(body, end_of_stream);
        }
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.llm.is_none() && ctx.mcp.is_none() {
            ctx.check_body_rate(body.as_ref().map_or(0, Bytes::len))?;
        }
        if let Some(call) = ctx.llm.as_mut() {
            call.replace_body(body);
        }
        if let Some(call) = ctx.mcp.as_mut() {
            call.replace_body(body);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        check_total(ctx)?;
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        PresetBody::remove(session);
        if let Some(call) = ctx.llm.as_mut() {
            call.wait_for_intent().await;
        }
        if let Some(call) = ctx.mcp.as_mut() {
            call.wait_for_intents().await;
        }
        let code = status_for(e);
        if code > 0 && session.response_written().is_none() {
            // The connection is closed after this answer (`can_reuse_downstream`
            // below), so the answer must say so: a client told `keep-alive`
            // would send its next request into a reset.
            session.set_keepalive(None);
            let body = Bytes::from(format!("{code} {}\n", reason(code)));
            let text = HeaderValue::from_static("text/plain");
            let extra = (code == 503).then(|| (header::RETRY_AFTER, "1".to_string()));
            if let Err(write_error) =
                respond(session, code, &text, body, &ctx.request_id, extra).await
            {
                tracing::debug!("cannot send error response: {write_error}");
            }
        }
        ctx.error_status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        PresetBody::remove(session);
        if let Some(guard) = HeadGuard::of(session.stream()) {
            guard.request_done();
        }
        let written = session.response_written().map(|r| r.status.as_u16());
        let status = written.unwrap_or(if ctx.error_status > 0 {
            ctx.error_status
        } else {
            499
        });
        let elapsed = ctx.started.elapsed();
        let generation;
        let metrics = match &ctx.route {
            Some(route) => &route.metrics,
            None => {
                generation = self.shared.current();
                &generation.unmatched
            }
        };
        metrics.count(status);
        metrics.duration.observe(elapsed.as_secs_f64());
        let llm_route = ctx.route.as_ref().map(|r| &r.config.action);
        if let (Some(Action::Llm(_)), Some(llm)) = (llm_route, &self.shared.llm) {
            if ctx.mcp.is_some() {
                let method = &session.req_header().method;
                mcp_route::logging(llm, ctx, method, status);
            } else {
                llm_route::logging(llm, ctx, status, elapsed).await;
            }
        }
        if let Some(tracer) = &self.shared.tracer {
            trace::finish(tracer, session, ctx, status, self.scheme);
        }

        if !self.shared.access_log.enabled() {
            return;
        }
        let termination = termination(e, ctx.response_time.is_some(), ctx.connect_time.is_some());
        let req = session.req_header();
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let server = ctx.server.as_ref().map(|c| c.server().config.name.as_str());
        let ms = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
        self.shared.access_log.log(&AccessRecord {
            time: SystemTime::now(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            listener: &self.listener,
            route: ctx.route.as_ref().map_or("-", |r| r.name()),
            pool: ctx.pool.as_ref().map_or("-", |p| p.name()),
            server: server.unwrap_or("-"),
            connect_ms: ms(ctx.connect_time),
            response_ms: ms(ctx.response_time),
            total_ms: elapsed.as_millis() as i64,
            status,
            bytes: session.body_bytes_sent(),
            termination,
            retries: ctx.attempts.saturating_sub(1),
            method: req.method.as_str(),
            uri,
            version: version_text(req.version),
            request_id: ctx.request_id.as_str(),
            tenant: match (&ctx.llm, &ctx.mcp, &ctx.caller) {
                (Some(call), _, _) => call.principal.tenant.name.as_str(),
                (None, Some(_), Some(caller)) => caller.tenant.name.as_str(),
                _ => "-",
            },
        });
    }
}

/// Fails the request once the pool's `total` timeout has passed.
fn check_total(ctx: &mut RequestCtx) -> Result<()> {
    let total = ctx.pool.as_ref().and_then(|p| p.config.timeouts.total);
    if let (Some(total), Some(started)) = (total, ctx.upstream_started) {
        if started.elapsed() > total {
            ctx.total_timeout_hit = true;
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                format!("total timeout {total:?} exceeded"),
            );
            e.set_retry(false);
            return Err(e.into_up());
        }
    }
    Ok(())
}
