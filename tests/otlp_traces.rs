//! Request traces over OTLP/HTTP, received by a collector stand-in that
//! decodes the protobuf with the official OpenTelemetry protos
//! (`tests/otlp/receiver.py`): every request is a server span with child
//! spans for its steps and the upstream call (GenAI attributes on LLM
//! routes), a client's `traceparent` is continued and sent on upstream, and
//! a collector that is down costs nothing but a counter.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "obk_traced_00000000000000000000000";
const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// The collector stand-in and the spans it printed so far.
struct Collector {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/otlp/receiver.py"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver (scripts/setup.sh installs opentelemetry-proto)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver says where it listens (is opentelemetry-proto installed? run scripts/setup.sh)");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .expect("a port");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line).expect("a JSON line");
                assert!(
                    span.get("decode_error").is_none(),
                    "undecodable export: {span}"
                );
                sink.lock().expect("lock").push(span);
            }
        });
        Self { child, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the trace `trace_id` has `count` spans, and returns them.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Value> = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "trace {trace_id}: {} spans of {count} arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The trace ids seen so far, in arrival order.
    fn trace_ids(&self) -> Vec<String> {
        let spans = self.spans.lock().expect("lock");
        let mut ids: Vec<String> = Vec::new();
        for s in spans.iter() {
            let id = s["trace_id"].as_str().unwrap_or_default().to_owned();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(upstream: &MockUpstream) -> String {
    format!(
        "pools:\n{}\
tracing: {{ batch_interval: 50ms }}
seed:
  tenants: [{{ name: acme }}]
  models: [{{ name: small, pool: p, upstream_model: vendor/small-v2 }}]
  keys: [{{ tenant: acme, name: k, secret: {KEY} }}]
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{}}
  - name: plain
    proxy: {{ pool: p }}
",
        pool("p", &[upstream], "")
    )
}

async fn traced_obleth(upstream: &MockUpstream, endpoint: &str) -> Obleth {
    Obleth::start_with(
        &config(upstream),
        "httplog",
        &[("OBLETH_OTEL_ENDPOINT", endpoint)],
    )
    .await
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test]
async fn an_llm_request_is_a_server_span_with_its_steps_and_a_genai_upstream_span() {
    let collector = Collector::start();
    let upstream = mock("a").await;
    let obleth = traced_obleth(&upstream, &collector.endpoint()).await;

    let resp = post_chat(&obleth, KEY, &two_token_chat("small")).await;
    assert_eq!(resp.status(), 200);
    let traceparent = header_text(&resp, "x-mock-saw-traceparent");
    let body: Value = resp.json().await.expect("json");
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .expect("a traceparent upstream");

    let spans = collector.trace(trace_id, 5).await;
    let server = named(&spans, "POST llm");
    assert_eq!(server["kind"], 2, "SERVER");
    assert_eq!(server["parent_span_id"], "", "a new trace starts at obleth");
    let a = &server["attributes"];
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["url.path"], "/v1/chat/completions");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["http.route"], "llm");
    assert_eq!(a["gen_ai.request.model"], "small");
    assert_eq!(a["obleth.tenant.name"], "acme");
    assert_eq!(a["obleth.admission"], "fast");
    assert_eq!(server["resource"]["service.name"], "obleth");
    assert_eq!(server["scope"], "obleth");

    for step in ["auth", "admission", "budget"] {
        let span = named(&spans, step);
        assert_eq!(span["parent_span_id"], server["span_id"], "{step}");
        assert!(span["start"].as_u64() >= server["start"].as_u64(), "{step}");
        assert!(span["end"].as_u64() <= server["end"].as_u64(), "{step}");
    }

    let call = named(&spans, "chat vendor/small-v2");
    assert_eq!(call["kind"], 3, "CLIENT");
    assert_eq!(call["parent_span_id"], server["span_id"]);
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", call["span_id"].as_str().expect("id")),
        "the upstream's parent is the upstream span"
    );
    let a = &call["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.request.model"], "vendor/small-v2");
    assert_eq!(
        a["gen_ai.usage.input_tokens"],
        body["usage"]["prompt_tokens"]
    );
    assert_eq!(
        a["gen_ai.usage.output_tokens"],
        body["usage"]["completion_tokens"]
    );
    assert_eq!(a["http.response.status_code"], 200);
    let events: Vec<&str> = call["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(events, ["connected", "first_byte"]);
}

#[tokio::test]
async fn a_client_traceparent_is_continued_and_an_unsampled_one_passed_on_untouched() {
    let collector = Collector::start();
    let upstream = mock("a").await;
    let obleth = traced_obleth(&upstream, &collector.endpoint()).await;

    let unsampled = format!("00-{}-{PARENT_SPAN}-00", "1".repeat(32));
    let resp = get_with(&obleth, "/echo", ("traceparent", &unsampled)).await;
    assert_eq!(header_text(&resp, "x-mock-saw-traceparent"), unsampled);

    let parent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let resp = client()
        .get(obleth.url("/echo"))
        .header("traceparent", &parent)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let upstream_parent = header_text(&resp, "x-mock-saw-traceparent");
    assert!(
        upstream_parent.starts_with(&format!("00-{PARENT_TRACE}-")),
        "{upstream_parent}"
    );

    let spans = collector.trace(PARENT_TRACE, 2).await;
    let server = named(&spans, "GET plain");
    assert_eq!(server["parent_span_id"], PARENT_SPAN);
    assert_eq!(server["trace_state"], "vendor=abc");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    let call = named(&spans, "upstream");
    assert_eq!(call["parent_span_id"], server["span_id"]);
    assert!(upstream_parent.contains(call["span_id"].as_str().expect("id")));
    assert_eq!(call["attributes"]["obleth.pool"], "p");
    assert_eq!(
        collector.trace_ids(),
        [PARENT_TRACE],
        "the unsampled request left no spans"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_but_a_counter() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let upstream = mock("a").await;
    let obleth = traced_obleth(&upstream, &closed).await;
    for _ in 0..5 {
        let resp = post_chat(&obleth, KEY, &two_token_chat("small")).await;
        assert_eq!(resp.status(), 200);
    }
    obleth
        .wait_at_least(
            "obleth_trace_spans_dropped_total{reason=\"export_failed\"}",
            5.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        obleth.stderr().matches("cannot export traces").count() == 1,
        "logged once"
    );
    assert_eq!(
        obleth.try_metric("obleth_trace_spans_exported_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_traceparent_passes_through() {
    let upstream = mock("a").await;
    let obleth =
        Obleth::start(&config(&upstream).replace("tracing: { batch_interval: 50ms }\n", "")).await;
    let parent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let resp = get_with(&obleth, "/echo", ("traceparent", &parent)).await;
    assert_eq!(header_text(&resp, "x-mock-saw-traceparent"), parent);
    let resp = post_json(
        &obleth,
        KEY,
        "/v1/chat/completions",
        &json!({"model": "small", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header_text(&resp, "x-mock-saw-traceparent"), "");
}
