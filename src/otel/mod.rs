//! Distributed tracing: with `tracing.endpoint` (`OBLETH_OTEL_ENDPOINT`)
//! set, each sampled request becomes a server span with child spans for
//! its steps, exported over OTLP/HTTP off the request path.
//!
//! - [`traceparent`]: W3C Trace Context, read from the client and sent on
//!   to the upstream.
//! - [`otlp`]: the protobuf messages of the OTLP trace export.
//! - `exporter`: the bounded queue and the batching export task.
//!
//! This module knows spans, not requests: `proxy::trace` says what a
//! request's spans contain.

mod exporter;
pub mod otlp;
pub mod traceparent;

use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use crate::config::TracingSettings;
use exporter::Exporter;
use otlp::{Event, KeyValue, Span, SpanKind, Status, StatusCode};

/// Starts request traces and hands finished ones to the exporter.
pub struct Tracer {
    exporter: Exporter,
    sample_ratio: f64,
}

impl Tracer {
    /// Starts the export task on the current runtime.
    pub fn start(settings: &TracingSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            exporter: Exporter::start(settings)?,
            sample_ratio: settings.sample_ratio,
        })
    }

    /// The trace of a request with `headers`, or `None` when it is not
    /// sampled. A client's `traceparent` decides for its own trace (parent
    /// based sampling); a new trace is sampled at `sample_ratio`.
    pub fn begin(&self, headers: &HeaderMap) -> Option<RequestTrace> {
        let parent = headers
            .get("traceparent")
            .and_then(|v| traceparent::parse(v.as_bytes()));
        let sampled = match parent {
            Some(p) => p.sampled,
            None => self.sample_ratio >= 1.0 || rand::random::<f64>() < self.sample_ratio,
        };
        if !sampled {
            return None;
        }
        let trace_state = match (parent, headers.get("tracestate")) {
            (Some(_), Some(state)) => state.to_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        Some(RequestTrace {
            trace_id: parent.map_or_else(rand::random, |p| p.trace_id),
            span_id: span_id(),
            parent: parent.map(|p| p.span_id),
            trace_state,
            upstream_span_id: span_id(),
            wall: SystemTime::now(),
            clock: Instant::now(),
            spans: Vec::new(),
        })
    }

    /// Queues the spans of a finished request for export.
    pub fn finish(&self, spans: Vec<Span>) {
        self.exporter.submit(spans);
    }
}

fn span_id() -> [u8; 8] {
    // Never the all-zero id, which W3C Trace Context treats as invalid.
    rand::random::<u64>().max(1).to_be_bytes()
}

/// One request's trace while it is served: its ids and the spans of the
/// steps that already ended.
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: String,
    /// Chosen up front: the upstream learns it in `traceparent` before the
    /// span ends.
    upstream_span_id: [u8; 8],
    /// The same moment on the wall clock and the monotonic clock, so steps
    /// timed with `Instant`s get Unix times.
    wall: SystemTime,
    clock: Instant,
    spans: Vec<Span>,
}

/// The parts of a span that differ from one span to the next.
pub struct SpanSpec {
    pub name: String,
    pub kind: SpanKind,
    pub start: Instant,
    pub end: Instant,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<(&'static str, Instant)>,
    /// Set for a failed operation, with what went wrong.
    pub error: Option<String>,
}

impl SpanSpec {
    pub fn new(name: impl Into<String>, kind: SpanKind, start: Instant, end: Instant) -> Self {
        Self {
            name: name.into(),
            kind,
            start,
            end,
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }
}

impl RequestTrace {
    /// Records an internal step that started at `start` and ends now.
    pub fn step(&mut self, name: &'static str, start: Instant, attributes: Vec<KeyValue>) {
        let mut spec = SpanSpec::new(name, SpanKind::Internal, start, Instant::now());
        spec.attributes = attributes;
        let span = self.span(spec, span_id(), Some(self.span_id));
        self.spans.push(span);
    }

    /// The `traceparent` for the upstream request: its parent is the
    /// upstream span.
    pub fn upstream_traceparent(&self) -> String {
        traceparent::format(&self.trace_id, &self.upstream_span_id, true)
    }

    /// Ends the trace: the request's server span, its upstream span if it
    /// had one, and the steps recorded before.
    pub fn finish(mut self, root: SpanSpec, upstream: Option<SpanSpec>) -> Vec<Span> {
        if let Some(upstream) = upstream {
            let span = self.span(upstream, self.upstream_span_id, Some(self.span_id));
            self.spans.push(span);
        }
        let root = self.span(root, self.span_id, self.parent);
        let mut spans = std::mem::take(&mut self.spans);
        spans.push(root);
        spans
    }

    fn span(&self, spec: SpanSpec, id: [u8; 8], parent: Option<[u8; 8]>) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: id.to_vec(),
            trace_state: self.trace_state.clone(),
            parent_span_id: parent.map_or_else(Vec::new, |p| p.to_vec()),
            name: spec.name,
            kind: spec.kind as i32,
            start_time_unix_nano: self.unix_nanos(spec.start),
            end_time_unix_nano: self.unix_nanos(spec.end),
            attributes: spec.attributes,
            events: spec
                .events
                .into_iter()
                .map(|(name, at)| Event {
                    time_unix_nano: self.unix_nanos(at),
                    name: name.into(),
                    attributes: Vec::new(),
                })
                .collect(),
            status: spec.error.map(|message| Status {
                message,
                code: StatusCode::Error as i32,
            }),
            // W3C flags: sampled.
            flags: 1,
        }
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.clock) {
            Some(later) => self.wall + later,
            None => self.wall - self.clock.duration_since(at),
        };
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn trace_with(headers: &[(&'static str, &str)]) -> RequestTrace {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().expect("header value"));
        }
        let (queue, _spans) = tokio::sync::mpsc::channel(1);
        let tracer = Tracer {
            exporter: Exporter::from_queue(queue),
            sample_ratio: 1.0,
        };
        tracer.begin(&map).expect("sampled")
    }

    #[test]
    fn a_client_traceparent_is_continued_and_the_upstream_gets_a_child() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = trace_with(&[("traceparent", parent), ("tracestate", "k=v")]);
        let upstream = traceparent::parse(trace.upstream_traceparent().as_bytes()).expect("valid");
        assert_eq!(
            hex::encode(upstream.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let now = Instant::now();
        let spans = trace.finish(
            SpanSpec::new("GET r", SpanKind::Server, now, now),
            Some(SpanSpec::new("GET", SpanKind::Client, now, now)),
        );
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(
            server.parent_span_id,
            hex::decode("00f067aa0ba902b7").expect("hex")
        );
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(client.span_id, upstream.span_id.to_vec());
        assert_eq!(server.trace_state, "k=v");
    }

    #[test]
    fn an_unsampled_parent_is_not_traced() {
        let mut map = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        map.insert("traceparent", parent.parse().expect("header value"));
        let (queue, _spans) = tokio::sync::mpsc::channel(1);
        let tracer = Tracer {
            exporter: Exporter::from_queue(queue),
            sample_ratio: 1.0,
        };
        assert!(tracer.begin(&map).is_none());
    }

    #[test]
    fn steps_get_unix_times_in_order_and_encode_as_otlp() {
        let mut trace = trace_with(&[]);
        let start = Instant::now();
        trace.step("auth", start, vec![KeyValue::text("obleth.tenant.id", "t")]);
        let spans = trace.finish(
            SpanSpec::new("POST llm", SpanKind::Server, start, Instant::now()),
            None,
        );
        assert_eq!(spans.len(), 2);
        let unix_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        for span in &spans {
            assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
            assert!(unix_now - span.start_time_unix_nano < 5_000_000_000);
        }
        let bytes = otlp::encode(&[], spans);
        let decoded = otlp::ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].name, "auth");
        assert!(spans[1].parent_span_id.is_empty());
    }
}
