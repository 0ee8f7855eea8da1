//! What a request's trace says, put together in `logging` from the request
//! context: the server span with HTTP attributes (and, on LLM routes, the
//! tenant, admission and model), and the upstream span with its connect and
//! first-byte events and the OpenTelemetry GenAI attributes of the call.

use std::time::Instant;

use pingora::proxy::Session;

use super::errors::reason;
use super::RequestCtx;
use crate::otel::otlp::{KeyValue, SpanKind};
use crate::otel::{SpanSpec, Tracer};

/// Ends the request's trace, if it has one, and queues it for export.
pub(super) fn finish(
    tracer: &Tracer,
    session: &Session,
    ctx: &mut RequestCtx,
    status: u16,
    scheme: &str,
) {
    let Some(trace) = ctx.trace.take() else {
        return;
    };
    let now = Instant::now();
    let root = server_span(session, ctx, status, scheme, now);
    let upstream = ctx
        .upstream_started
        .map(|start| upstream_span(ctx, start, now));
    tracer.finish(trace.finish(root, upstream));
}

fn server_span(
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    scheme: &str,
    now: Instant,
) -> SpanSpec {
    let req = session.req_header();
    let route = ctx.route.as_ref().map_or("-", |r| r.name());
    let mut span = SpanSpec::new(
        format!("{} {route}", req.method),
        SpanKind::Server,
        ctx.started,
        now,
    );
    let a = &mut span.attributes;
    a.push(KeyValue::text("http.request.method", req.method.as_str()));
    a.push(KeyValue::text("url.path", req.uri.path()));
    a.push(KeyValue::text("url.scheme", scheme));
    a.push(KeyValue::text("http.route", route));
    a.push(KeyValue::int(
        "http.response.status_code",
        i64::from(status),
    ));
    a.push(KeyValue::text(
        "network.protocol.version",
        protocol_version(req.version),
    ));
    a.push(KeyValue::text("obleth.request_id", ctx.request_id.as_str()));
    if let Some(ip) = session.client_addr().and_then(|c| c.as_inet()) {
        a.push(KeyValue::text("client.address", ip.ip().to_string()));
    }
    let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(host) = header(http::header::HOST).or(req.uri.host()) {
        a.push(KeyValue::text("server.address", host));
    }
    if let Some(agent) = header(http::header::USER_AGENT) {
        a.push(KeyValue::text("user_agent.original", agent));
    }
    if let Some(caller) = &ctx.caller {
        a.push(KeyValue::text(
            "obleth.tenant.id",
            caller.tenant.id.as_str(),
        ));
        a.push(KeyValue::text(
            "obleth.tenant.name",
            caller.tenant.name.as_str(),
        ));
        a.push(KeyValue::text("obleth.key.id", caller.key.id.as_str()));
    }
    if let Some(model) = &ctx.model {
        a.push(KeyValue::text("gen_ai.request.model", model.as_str()));
    }
    if let Some(call) = &ctx.llm {
        a.push(KeyValue::text("obleth.admission", call.admission()));
    }
    // A server span is an error only when the server failed (5xx).
    if status >= 500 {
        span.error = Some(format!("{status} {}", reason(status)));
    }
    span
}

fn upstream_span(ctx: &RequestCtx, start: Instant, now: Instant) -> SpanSpec {
    let llm = ctx.llm.as_deref();
    let name = match llm.and_then(|c| c.operation().map(|op| (op, c))) {
        Some((op, call)) => format!("{op} {}", call.model.model.upstream_model),
        None => "upstream".to_owned(),
    };
    let mut span = SpanSpec::new(name, SpanKind::Client, start, now);
    let a = &mut span.attributes;
    if let Some(pool) = &ctx.pool {
        a.push(KeyValue::text("obleth.pool", pool.name()));
    }
    if let Some(server) = &ctx.server {
        a.push(KeyValue::text(
            "server.address",
            server.server().config.name.as_str(),
        ));
    }
    a.push(KeyValue::int(
        "obleth.upstream.attempts",
        ctx.attempts as i64,
    ));
    let upstream_status = llm.and_then(|c| c.upstream_status);
    if let Some(status) = upstream_status {
        a.push(KeyValue::int(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if let Some(call) = llm {
        if let Some(op) = call.operation() {
            a.push(KeyValue::text("gen_ai.operation.name", op));
        }
        a.push(KeyValue::text(
            "gen_ai.request.model",
            call.model.model.upstream_model.as_str(),
        ));
        if let Some(charged) = call.charged {
            a.push(KeyValue::int(
                "gen_ai.usage.input_tokens",
                charged.input_tokens as i64,
            ));
            a.push(KeyValue::int(
                "gen_ai.usage.output_tokens",
                charged.output_tokens as i64,
            ));
            a.push(KeyValue::flag("obleth.usage.estimated", charged.estimated));
        }
    }
    if let (Some(attempt), Some(connect)) = (ctx.attempt_started, ctx.connect_time) {
        span.events.push(("connected", attempt + connect));
    }
    match ctx.first_byte {
        Some(first) => span.events.push(("first_byte", ctx.started + first)),
        None => span.error = Some("no response from the upstream".into()),
    }
    if upstream_status.is_some_and(|s| s >= 500) {
        span.error = Some("the upstream answered with a server error".into());
    }
    span
}

/// `network.protocol.version` as OpenTelemetry writes it.
fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
