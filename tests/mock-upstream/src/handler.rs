//! Request handling: the per-request `x-mock-*` overrides, routing, and the
//! plain (non-OpenAI) endpoints `/`, `/bench`, `/health` and `/echo`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::Notify;

use crate::faults::{self, Fault, Payload, ResponseBody};
use crate::{openai, Shared};

/// Names the server that answered, on every response.
const X_MOCK_SERVER: HeaderName = HeaderName::from_static("x-mock-server");
const X_MOCK_LATENCY_MS: HeaderName = HeaderName::from_static("x-mock-latency-ms");
const X_MOCK_STATUS: HeaderName = HeaderName::from_static("x-mock-status");
const X_MOCK_TPS: HeaderName = HeaderName::from_static("x-mock-tps");
const X_MOCK_FAULT: HeaderName = HeaderName::from_static("x-mock-fault");
/// Echoes the `Authorization` the mock received, so tests can check which
/// credential a proxy sent upstream.
const X_MOCK_SAW_AUTHORIZATION: HeaderName = HeaderName::from_static("x-mock-saw-authorization");
/// Echoes the W3C `traceparent` the mock received, so tests can check that
/// a trace continues upstream.
const X_MOCK_SAW_TRACEPARENT: HeaderName = HeaderName::from_static("x-mock-saw-traceparent");
/// The length of the request body received, on every response.
const X_MOCK_RECEIVED_BYTES: HeaderName = HeaderName::from_static("x-mock-received-bytes");
/// The FNV-1a digest (16 hex digits) of the request body received.
const X_MOCK_RECEIVED_FNV1A: HeaderName = HeaderName::from_static("x-mock-received-fnv1a");

pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
pub(crate) const APPLICATION_JSON: &str = "application/json";
pub(crate) const TEXT_EVENT_STREAM: &str = "text/event-stream";

/// What an endpoint answers; turned into a response by [`respond`].
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) payload: Payload,
    /// The `allow` header of a 405 answer.
    pub(crate) allow: Option<&'static str>,
}

impl Reply {
    pub(crate) fn text(status: StatusCode, body: &'static str) -> Self {
        Self::new(
            status,
            TEXT_PLAIN,
            Payload::Full(Bytes::from_static(body.as_bytes())),
        )
    }

    pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self::new(status, APPLICATION_JSON, Payload::Full(body.into()))
    }

    pub(crate) fn events(chunks: faults::Chunks) -> Self {
        Self::new(StatusCode::OK, TEXT_EVENT_STREAM, Payload::Events(chunks))
    }

    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
    }

    fn new(status: StatusCode, content_type: &'static str, payload: Payload) -> Self {
        Self {
            status,
            content_type,
            payload,
            allow: None,
        }
    }
}

/// Per-request behaviour asked for with `x-mock-*` headers.
#[derive(Default)]
struct Overrides {
    latency: Option<Duration>,
    status: Option<StatusCode>,
    tokens_per_second: Option<f64>,
    fault: Option<Fault>,
}

impl Overrides {
    /// Fails with a message for the client when a header is malformed, so a
    /// typo in a test shows up as a 400 rather than as a silently ignored
    /// override.
    fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let mut overrides = Overrides::default();
        if let Some(ms) = header(headers, &X_MOCK_LATENCY_MS)? {
            let ms = ms
                .parse()
                .map_err(|_| format!("invalid x-mock-latency-ms {ms:?}"))?;
            overrides.latency = Some(Duration::from_millis(ms));
        }
        if let Some(status) = header(headers, &X_MOCK_STATUS)? {
            overrides.status = Some(parse_status(status)?);
        }
        if let Some(tps) = header(headers, &X_MOCK_TPS)? {
            match tps.parse::<f64>() {
                Ok(tps) if tps >= 0.0 => overrides.tokens_per_second = Some(tps),
                _ => return Err(format!("invalid x-mock-tps {tps:?}")),
            }
        }
        if let Some(fault) = header(headers, &X_MOCK_FAULT)? {
            overrides.fault = Some(fault.parse()?);
        }
        Ok(overrides)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, String> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map(str::trim)
                .map_err(|_| format!("{name} is not ASCII"))
        })
        .transpose()
}

/// Statuses a mock may be told to answer: a final status with a body.
pub(crate) fn parse_status(value: &str) -> Result<StatusCode, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("invalid x-mock-status {value:?}: expected 200..=599"))
}

/// The delay between token events for a pace in tokens per second.
fn pace(tokens_per_second: f64) -> Duration {
    if tokens_per_second > 0.0 && tokens_per_second.is_finite() {
        Duration::try_from_secs_f64(tokens_per_second.recip()).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// The hyper service: answers one request. `kill` closes this request's
/// connection without a response (the `close` fault).
pub(crate) async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    kill: Arc<Notify>,
) -> Result<Response<ResponseBody>, Infallible> {
    let seq = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let overrides = match Overrides::from_headers(request.headers()) {
        Ok(overrides) => overrides,
        Err(message) => {
            let reply = openai::error_reply(StatusCode::BAD_REQUEST, message);
            return Ok(respond(reply, &shared, Duration::ZERO, None));
        }
    };
    let (parts, body) = request.into_parts();
    // The whole request is read before answering, like a real upstream, and
    // so that closing the connection later never discards unread bytes
    // (which would turn the close into a reset).
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let reply = Reply::text(StatusCode::BAD_REQUEST, "could not read request body\n");
            return Ok(respond(reply, &shared, Duration::ZERO, None));
        }
    };

    if overrides.fault == Some(Fault::Hang) {
        // Ends when hyper sees the client go away, or on stop().
        return std::future::pending().await;
    }
    let latency = overrides.latency.unwrap_or(shared.config.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if overrides.fault == Some(Fault::Close) {
        kill.notify_one();
        return std::future::pending().await;
    }

    let is_openai = parts.uri.path() == "/v1" || parts.uri.path().starts_with("/v1/");
    let forced_status = overrides.status.or_else(|| {
        let configured = shared.config.status.filter(|_| is_openai)?;
        StatusCode::from_u16(configured).ok()
    });
    let reply = match forced_status {
        Some(status) if status.is_client_error() || status.is_server_error() => {
            openai::error_reply(
                status,
                format!("mock upstream answering with status {status}"),
            )
        }
        forced => {
            let mut reply = route(&parts, &body, &shared, seq);
            if let Some(status) = forced {
                reply.status = status;
            }
            reply
        }
    };
    let pace = pace(
        overrides
            .tokens_per_second
            .unwrap_or(shared.config.tokens_per_second),
    );
    let mut response = respond(reply, &shared, pace, overrides.fault);
    if let Some(credential) = parts.headers.get(hyper::header::AUTHORIZATION) {
        response
            .headers_mut()
            .insert(X_MOCK_SAW_AUTHORIZATION, credential.clone());
    }
    if let Some(parent) = parts.headers.get("traceparent") {
        response
            .headers_mut()
            .insert(X_MOCK_SAW_TRACEPARENT, parent.clone());
    }
    let headers = response.headers_mut();
    headers.insert(X_MOCK_RECEIVED_BYTES, HeaderValue::from(body.len()));
    if let Ok(digest) = HeaderValue::from_str(&format!("{:016x}", openai::fnv1a(&body))) {
        headers.insert(X_MOCK_RECEIVED_FNV1A, digest);
    }
    Ok(response)
}

fn respond(
    reply: Reply,
    shared: &Shared,
    pace: Duration,
    fault: Option<Fault>,
) -> Response<ResponseBody> {
    let is_stream = matches!(reply.payload, Payload::Events(_));
    let mut response = Response::new(faults::body(reply.payload, pace, fault));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if is_stream {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Some(allow) = reply.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    headers.insert(X_MOCK_SERVER, shared.server_header.clone());
    response
}

fn route(parts: &Parts, body: &Bytes, shared: &Shared, seq: u64) -> Reply {
    let path = parts.uri.path();
    let is_get = matches!(parts.method, Method::GET | Method::HEAD);
    match path {
        "/" | "/bench" if is_get => Reply::text(StatusCode::OK, "ok\n"),
        "/health" if is_get => {
            if shared.healthy.load(Ordering::Relaxed) {
                Reply::text(StatusCode::OK, "ok")
            } else {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            }
        }
        "/" | "/bench" | "/health" => Reply::method_not_allowed("GET, HEAD"),
        _ if path == "/echo" || path.starts_with("/echo/") => echo(parts, body),
        _ if path == "/v1" || path.starts_with("/v1/") => {
            let content_type = parts
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            openai::route(&parts.method, path, body, content_type, seq)
        }
        _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What `/echo` saw of the request, so tests can assert what the proxy
/// forwarded (headers added or removed, paths rewritten).
#[derive(Serialize)]
struct Echo<'a> {
    method: &'a str,
    path: &'a str,
    /// The raw query string without `?`; empty when there is none.
    query: &'a str,
    /// Lowercase header names; repeated headers joined with `", "`.
    headers: BTreeMap<&'a str, String>,
    body_len: usize,
}

fn echo(parts: &Parts, body: &Bytes) -> Reply {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let echo = Echo {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers,
        body_len: body.len(),
    };
    Reply::json(StatusCode::OK, openai::to_json(&echo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_the_inverse_of_tokens_per_second() {
        assert_eq!(pace(0.0), Duration::ZERO);
        assert_eq!(pace(f64::INFINITY), Duration::ZERO);
        assert_eq!(pace(4.0), Duration::from_millis(250));
        assert_eq!(pace(f64::MIN_POSITIVE), Duration::MAX);
    }

    #[test]
    fn rejects_malformed_overrides() {
        let mut headers = HeaderMap::new();
        headers.insert(X_MOCK_STATUS, HeaderValue::from_static("99"));
        assert!(Overrides::from_headers(&headers).is_err());
        headers.insert(X_MOCK_STATUS, HeaderValue::from_static("429"));
        headers.insert(X_MOCK_TPS, HeaderValue::from_static("-1"));
        assert!(Overrides::from_headers(&headers).is_err());
        headers.insert(X_MOCK_TPS, HeaderValue::from_static("2.5"));
        headers.insert(X_MOCK_LATENCY_MS, HeaderValue::from_static(" 15 "));
        let overrides = Overrides::from_headers(&headers).unwrap();
        assert_eq!(overrides.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(overrides.tokens_per_second, Some(2.5));
        assert_eq!(overrides.latency, Some(Duration::from_millis(15)));
    }
}
