//! Prometheus metrics. Label values come only from the configuration (route,
//! pool and server names), never from requests, so cardinality stays bounded.
//! Handles are resolved once per configuration generation, not per request.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process-wide metric families.
pub struct Families {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    pub upstream_attempts: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub server_healthy: IntGaugeVec,
    pub server_state: IntGaugeVec,
    pub server_weight: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub budget_rejections: IntCounterVec,
    pub budget_fail_open: IntCounter,
    pub settlements: IntCounterVec,
    pub budget_admissions: IntCounterVec,
    pub lease_renewals: IntCounterVec,
    pub tokens: IntCounterVec,
    pub llm_requests: IntCounterVec,
    pub mcp_requests: IntCounterVec,
    pub queue_wait: HistogramVec,
    pub admitted_in_flight: IntGauge,
    pub queue_depth: IntGauge,
    pub pool_in_flight: IntGaugeVec,
    pub pool_queue_depth: IntGaugeVec,
    pub telemetry_dropped: IntCounterVec,
    pub telemetry_durable: IntCounter,
    pub telemetry_shipped: IntCounter,
    pub telemetry_backlog: IntGauge,
    pub telemetry_disk: IntGauge,
    pub background_failures: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub start_time: IntGauge,
    pub budget_store_up: IntGauge,
    pub time_to_first_token: HistogramVec,
    pub trace_spans_exported: IntCounter,
    pub trace_spans_dropped: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub tls_certificate_reloads: IntCounterVec,
}

/// Registered on first use in Prometheus' default registry, next to
/// Pingora's own metrics.
pub static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    Families {
    requests: register_int_counter_vec!(
        "obleth_http_requests_total",
        "Requests answered, by route and status class",
        &["route", "status_class"]
    )
    .expect("metric registers once"),
    duration: register_histogram_vec!(
        "obleth_http_request_duration_seconds",
        "Time from request head to the end of the response, by route",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    in_flight: register_int_gauge!("obleth_http_in_flight", "Requests being served right now")
        .expect("metric registers once"),
    upstream_attempts: register_int_counter_vec!(
        "obleth_upstream_attempts_total",
        "Attempts to reach an upstream server, by pool and outcome",
        &["pool", "outcome"]
    )
    .expect("metric registers once"),
    upstream_retries: register_int_counter_vec!(
        "obleth_upstream_retries_total",
        "Attempts repeated on another server, by pool",
        &["pool"]
    )
    .expect("metric registers once"),
    server_healthy: register_int_gauge_vec!(
        "obleth_upstream_server_healthy",
        "1 while a server is in rotation, 0 while ejected",
        &["pool", "server"]
    )
    .expect("metric registers once"),
    server_state: register_int_gauge_vec!(
        "obleth_upstream_server_state",
        "1 for a server's administrative state (ready, drain, maint), 0 for the two others",
        &["pool", "server", "state"]
    )
    .expect("metric registers once"),
    server_weight: register_int_gauge_vec!(
        "obleth_upstream_server_weight",
        "A server's current weight (the configured one unless changed through the admin API)",
        &["pool", "server"]
    )
    .expect("metric registers once"),
    config_reloads: register_int_counter_vec!(
        "obleth_config_reloads_total",
        "Configuration reloads, by result",
        &["result"]
    )
    .expect("metric registers once"),
    budget_rejections: register_int_counter_vec!(
        "obleth_budget_rejections_total",
        "LLM requests refused by a budget, by reason (rate, too_large, term, unavailable)",
        &["reason"]
    )
    .expect("metric registers once"),
    budget_fail_open: prometheus::register_int_counter!(
        "obleth_budget_fail_open_total",
        "LLM requests admitted without a reservation because the budget store was unreachable"
    )
    .expect("metric registers once"),
    settlements: register_int_counter_vec!(
        "obleth_budget_settlements_total",
        "Settlements, by outcome (charged, refunded, estimated, repeated, deferred until Redis is back, failed)",
        &["outcome"]
    )
    .expect("metric registers once"),
    budget_admissions: register_int_counter_vec!(
        "obleth_budget_admissions_total",
        "Budget reservations admitted in Redis-backed scopes, by path (lease: against a lease already held, no round trip; renewal: after renewing the lease for the request)",
        &["path"]
    )
    .expect("metric registers once"),
    lease_renewals: register_int_counter_vec!(
        "obleth_budget_lease_renewals_total",
        "Budget lease renewals sent to Redis, by trigger (background, request) and result (ok, failed)",
        &["trigger", "result"]
    )
    .expect("metric registers once"),
    tokens: register_int_counter_vec!(
        "obleth_tokens_total",
        "Tokens settled, by direction (input, output)",
        &["direction"]
    )
    .expect("metric registers once"),
    llm_requests: register_int_counter_vec!(
        "obleth_requests_total",
        "LLM requests answered, by status class (2xx, 4xx, 5xx, ... as alerts match it), the code of the error contract, and admission (fast, queued, brownout, or rejected: refused before or at admission)",
        &["status", "code", "admission"]
    )
    .expect("metric registers once"),
    mcp_requests: register_int_counter_vec!(
        "obleth_mcp_requests_total",
        "MCP JSON-RPC messages (and GET / DELETE requests) on /mcp/{server}, by registered server (- when the name is unknown) and status class; a call the tool policy refused counts as 4xx",
        &["server", "status"]
    )
    .expect("metric registers once"),
    queue_wait: register_histogram_vec!(
        "obleth_queue_wait_seconds",
        "Time an LLM request waited for an admission slot, by admission",
        &["admission"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    admitted_in_flight: register_int_gauge!(
        "obleth_in_flight",
        "LLM requests holding an admission slot"
    )
    .expect("metric registers once"),
    queue_depth: register_int_gauge!(
        "obleth_queue_depth",
        "LLM requests waiting for an admission slot, all pools"
    )
    .expect("metric registers once"),
    pool_in_flight: register_int_gauge_vec!(
        "obleth_pool_in_flight",
        "LLM requests holding a slot of a model pool",
        &["pool"]
    )
    .expect("metric registers once"),
    pool_queue_depth: register_int_gauge_vec!(
        "obleth_pool_queue_depth",
        "LLM requests waiting for a slot of a model pool",
        &["pool"]
    )
    .expect("metric registers once"),
    telemetry_dropped: register_int_counter_vec!(
        "obleth_telemetry_dropped",
        "Usage records not logged, by reason (queue_full, disk_full, io_error, unencodable)",
        &["reason"]
    )
    .expect("metric registers once"),
    telemetry_durable: prometheus::register_int_counter!(
        "obleth_telemetry_durable_total",
        "Usage records written to the write-ahead log and synced"
    )
    .expect("metric registers once"),
    telemetry_shipped: prometheus::register_int_counter!(
        "obleth_telemetry_shipped_total",
        "Usage records acknowledged by ClickHouse"
    )
    .expect("metric registers once"),
    telemetry_backlog: register_int_gauge!(
        "obleth_telemetry_backlog_bytes",
        "Bytes of the write-ahead log not yet shipped"
    )
    .expect("metric registers once"),
    telemetry_disk: register_int_gauge!(
        "obleth_telemetry_disk_bytes",
        "Bytes of write-ahead log segments on disk"
    )
    .expect("metric registers once"),
    background_failures: register_int_counter_vec!(
        "obleth_background_failures_total",
        "Background tasks (health checks, usage shipping, invalidation) that died, by service",
        &["service"]
    )
    .expect("metric registers once"),
    connections_closed: register_int_counter_vec!(
        "obleth_connections_closed_total",
        "Client connections closed by obleth before a response, by reason",
        &["reason"]
    )
    .expect("metric registers once"),
    tls_certificate_expiry: register_int_gauge_vec!(
        "obleth_tls_certificate_expiry_seconds",
        "Unix time at which each served certificate expires, by listener and the first name it serves",
        &["listener", "name"]
    )
    .expect("metric registers once"),
    tls_certificate_reloads: register_int_counter_vec!(
        "obleth_tls_certificate_reloads_total",
        "Certificate reloads (SIGHUP or the admin API), by result",
        &["result"]
    )
    .expect("metric registers once"),
    build_info: register_int_gauge_vec!(
        "obleth_build_info",
        "Always 1; the version of the running binary",
        &["version"]
    )
    .expect("metric registers once"),
    start_time: register_int_gauge!(
        "obleth_start_time_seconds",
        "Unix time the process started; a change means a restart"
    )
    .expect("metric registers once"),
    budget_store_up: register_int_gauge!(
        "obleth_budget_store_up",
        "1 while the budget store answers, 0 while Redis is known down (always 1 for in-process budgets)"
    )
    .expect("metric registers once"),
    time_to_first_token: register_histogram_vec!(
        "obleth_llm_time_to_first_token_seconds",
        "From the request's arrival (queueing included) to the first bytes of a successful LLM response body, by model pool",
        &["pool"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    trace_spans_exported: prometheus::register_int_counter!(
        "obleth_trace_spans_exported_total",
        "Spans the trace collector accepted"
    )
    .expect("metric registers once"),
    trace_spans_dropped: register_int_counter_vec!(
        "obleth_trace_spans_dropped_total",
        "Spans not exported, by reason (queue_full, export_failed, stopped)",
        &["reason"]
    )
    .expect("metric registers once"),
    rate_limited: register_int_counter_vec!(
        "obleth_rate_limited_total",
        "Requests refused 429 by a route's rate_limit, by route",
        &["route"]
    )
    .expect("metric registers once"),
}
});

/// Marks the process start: build info and start time (read by the
/// restart alert), and every series with a fixed label set at zero, so a
/// dashboard shows them and `increase()` counts their first event.
pub fn process_started() {
    let f = &*FAMILIES;
    let zero = |family: &IntCounterVec, values: &[&str]| {
        for value in values {
            family.with_label_values(&[value]);
        }
    };
    zero(
        &f.budget_rejections,
        &["rate", "too_large", "term", "unavailable"],
    );
    zero(
        &f.trace_spans_dropped,
        &["queue_full", "export_failed", "stopped"],
    );
    zero(&f.config_reloads, &["ok", "rejected"]);
    zero(
        &f.settlements,
        &[
            "charged",
            "refunded",
            "estimated",
            "repeated",
            "deferred",
            "failed",
        ],
    );
    zero(&f.tokens, &["input", "output"]);
    zero(&f.budget_admissions, &["lease", "renewal"]);
    for trigger in ["background", "request"] {
        for result in ["ok", "failed"] {
            f.lease_renewals.with_label_values(&[trigger, result]);
        }
    }
    zero(
        &f.connections_closed,
        &[
            "head_timeout",
            "head_too_large",
            "slow_body",
            "proxy_protocol_untrusted",
            "proxy_protocol_invalid",
            "proxy_protocol_timeout",
        ],
    );
    zero(&f.tls_certificate_reloads, &["ok", "rejected"]);
    for admission in ["fast", "queued", "brownout", "rejected"] {
        f.queue_wait.with_label_values(&[admission]);
    }
    f.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    f.start_time.set(now);
    f.budget_store_up.set(1);
}

/// Copies the write-ahead log's counters into the telemetry metrics; run
/// at scrape time. The log's totals only grow, so the counters follow.
pub fn observe_telemetry(stats: &obleth_filters::telemetry::WalStats) {
    let f = &*FAMILIES;
    let follow = |counter: &IntCounter, total: u64| {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    };
    for (reason, n) in &stats.dropped {
        follow(&f.telemetry_dropped.with_label_values(&[reason]), *n);
    }
    follow(&f.telemetry_durable, stats.durable);
    follow(&f.telemetry_shipped, stats.shipped);
    f.telemetry_backlog.set(stats.backlog_bytes as i64);
    f.telemetry_disk.set(stats.disk_bytes as i64);
}

/// Copies a leasing budget store's totals into the budget metrics; run at
/// scrape time.
pub fn observe_budgets(stats: &obleth_filters::budget::LeaseStats) {
    let f = &*FAMILIES;
    let follow = |counter: IntCounter, total: u64| {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    };
    follow(
        f.budget_admissions.with_label_values(&["lease"]),
        stats.admitted_locally,
    );
    follow(
        f.budget_admissions.with_label_values(&["renewal"]),
        stats.admitted_after_renewal,
    );
    for (trigger, renewals) in [
        ("background", stats.background),
        ("request", stats.for_request),
    ] {
        follow(
            f.lease_renewals.with_label_values(&[trigger, "ok"]),
            renewals.answered,
        );
        follow(
            f.lease_renewals.with_label_values(&[trigger, "failed"]),
            renewals.failed,
        );
    }
}

/// Copies the admission scheduler's load into the gauges; run at scrape
/// time so the request path pays nothing for them. Pools are the enabled
/// models, a set the operator controls.
pub fn observe_admission(snapshot: &obleth_filters::admission::Snapshot) {
    let f = &*FAMILIES;
    f.admitted_in_flight.set(i64::from(snapshot.in_flight));
    f.queue_depth.set(snapshot.queued as i64);
    f.pool_in_flight.reset();
    f.pool_queue_depth.reset();
    for pool in &snapshot.pools {
        f.pool_in_flight
            .with_label_values(&[&pool.pool])
            .set(i64::from(pool.in_flight));
        f.pool_queue_depth
            .with_label_values(&[&pool.pool])
            .set(pool.queued as i64);
    }
}

/// Status classes in the order of [`RouteMetrics::by_class`].
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// A route's metric handles.
#[derive(Debug)]
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
    pub duration: Histogram,
    pub rate_limited: IntCounter,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let f = &*FAMILIES;
        Self {
            by_class: CLASSES.map(|c| f.requests.with_label_values(&[route, c])),
            duration: f.duration.with_label_values(&[route]),
            rate_limited: f.rate_limited.with_label_values(&[route]),
        }
    }

    pub fn count(&self, status: u16) {
        self.by_class[class_index(status)].inc();
    }
}

/// A status as its class label (`2xx`, `4xx`, `5xx`, ...).
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 5,
    }
}

/// A pool's metric handles.
#[derive(Debug)]
pub struct PoolMetrics {
    pub ok: IntCounter,
    pub connect_failed: IntCounter,
    pub failed: IntCounter,
    pub retries: IntCounter,
}

impl PoolMetrics {
    pub fn new(pool: &str) -> Self {
        let f = &*FAMILIES;
        Self {
            ok: f.upstream_attempts.with_label_values(&[pool, "ok"]),
            connect_failed: f
                .upstream_attempts
                .with_label_values(&[pool, "connect_error"]),
            failed: f.upstream_attempts.with_label_values(&[pool, "error"]),
            retries: f.upstream_retries.with_label_values(&[pool]),
        }
    }
}

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}
