//! The validated configuration: what the rest of obleth reads, with every
//! default applied and every reference resolved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::HeaderValue;
use ipnet::IpNet;
use obleth_filters::admission::QueueOrder;

use super::raw;
use super::RouteConfig;

/// The validated configuration of one obleth process.
#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerConfig>,
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub access_log: AccessLogConfig,
    /// How obleth writes its own log lines (stderr).
    pub log_format: LogFormat,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub store: StoreConfig,
    pub redis: Option<RedisConfig>,
    pub admin_auth: AdminAuth,
    pub seed: Seed,
    pub budgets: BudgetSettings,
    pub admission: AdmissionSettings,
    pub telemetry: TelemetrySettings,
    /// Span export over OTLP/HTTP; `None` traces nothing.
    pub tracing: Option<TracingSettings>,
    /// `OBLETH_API_KEY_PEPPER`: mixed into every key hash.
    pub api_key_pepper: Option<String>,
    /// `OBLETH_ENCRYPTION_KEY`: seals upstream keys at rest.
    pub encryption_key: Option<String>,
    pub dashboard: DashboardSettings,
}

/// The operator dashboard under `/ui/` on the admin listener.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// `None`: on in development; in production only when a dashboard
    /// secret is set.
    pub enabled: Option<bool>,
    /// The built front end; `None` looks in the usual places.
    pub assets: Option<std::path::PathBuf>,
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` even for plain-HTTP requests (the
    /// admin listener behind a TLS-terminating proxy that does not send
    /// `X-Forwarded-Proto`).
    pub secure_cookie: bool,
    /// `DASHBOARD_PASSWORD`.
    pub password: Option<String>,
    /// `DASHBOARD_SESSION_SECRET`.
    pub session_secret: Option<String>,
}

/// Where tenants, keys, models and the audit log live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://FILE`.
    pub database_url: String,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
}

/// The shared Redis: hot key cache, budgets and cache invalidation across
/// replicas.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub topology: obleth_filters::redis_link::Topology,
    /// Prepended to every Redis key and channel obleth uses.
    pub prefix: String,
    /// Replicas that must acknowledge a budget write before it counts
    /// (Redis' `WAIT`), so a failover cannot lose it; 0 trusts asynchronous
    /// replication.
    pub replica_acks: u32,
    /// How long a budget write waits for those acknowledgements.
    pub replica_ack_timeout: std::time::Duration,
}

/// How token budgets behave.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// Admit requests (and count them) when the budget store is
    /// unreachable; `false` answers 503 at once.
    pub fail_open: bool,
    /// Completion tokens reserved when a request gives no `max_tokens`.
    pub default_max_tokens: u64,
    /// How long Redis keeps a replica's budget lease after its last
    /// renewal: how soon a dead replica's slices return to the others.
    pub lease_ttl: std::time::Duration,
}

/// Limits of fair admission on LLM routes.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Admitted LLM requests in this process at once
    /// (`OBLETH_GLOBAL_MAX_IN_FLIGHT`); changed live by `PUT /api/v1/capacity`.
    pub global_max_in_flight: u32,
    /// Waiting requests per model pool before new ones get 429.
    pub queue_per_pool: usize,
    /// Longest wait for a slot before a 503.
    pub timeout: Duration,
    /// Waits longer than this are served degraded (`OBLETH_BROWNOUT_WAIT_MS`;
    /// `None` when set to 0).
    pub brownout_wait: Option<Duration>,
    /// The `max_tokens` a degraded request is capped to.
    pub brownout_max_tokens: u64,
    /// `fair`, or `fifo` to measure fairness against.
    pub order: QueueOrder,
    /// Bytes of LLM request bodies held in memory at once, process-wide.
    pub max_buffered_body: usize,
}

/// Where usage records go: the write-ahead log, and ClickHouse.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `OBLETH_WAL_PATH`.
    pub wal: obleth_filters::telemetry::WalConfig,
    pub on_full: OnFull,
    /// Names this process in usage records and batch ids.
    pub replica: String,
    /// `OBLETH_CLICKHOUSE_URL` (password: `OBLETH_CLICKHOUSE_PASSWORD`).
    pub clickhouse: Option<ClickHouseSettings>,
}

/// Where and how request spans are exported.
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// The collector's traces URL: `{tracing.endpoint}/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces sampled; a client's `traceparent` decides for
    /// the trace it names.
    pub sample_ratio: f64,
    /// Requests whose spans may wait for export; more are dropped.
    pub queue: usize,
    /// Spans in one export request at most.
    pub batch_spans: usize,
    /// The longest a finished span waits for its batch.
    pub batch_interval: Duration,
    /// Bound on one export request.
    pub timeout: Duration,
}

/// What LLM requests get while usage records would be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Serve them; the dropped records are counted.
    Serve,
    /// Answer 503 until the log has room again.
    Refuse,
}

/// The ClickHouse sink and its shipping bounds.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub connection: obleth_filters::telemetry::ClickHouseConfig,
    pub shipping: obleth_filters::telemetry::ShipperConfig,
    /// Day partitions older than this are dropped (0 keeps everything).
    pub retention_days: u32,
}

/// How the admin API authenticates operators.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// `OBLETH_ADMIN_TOKEN`.
    pub token: Option<String>,
    /// Generate (and print once) a token when none is set.
    pub generate_dev_token: bool,
}

/// What the file declares to exist in the store; applied idempotently at
/// start-up.
#[derive(Debug, Default, Clone)]
pub struct Seed {
    pub groups: Vec<crate::store::Group>,
    pub tenants: Vec<crate::store::TenantSpec>,
    pub models: Vec<crate::store::ModelSpec>,
    pub mcp_servers: Vec<crate::store::McpServerSpec>,
    pub keys: Vec<raw::SeedKey>,
}

/// The largest `routes[].llm.max_body`: an LLM request's body is held in
/// memory whole.
pub const LLM_MAX_BODY: u64 = 1 << 30;

/// `routes[].llm.max_body` when not given.
pub const LLM_DEFAULT_BODY: u64 = 32 << 20;

/// `admission.max_buffered_body` when not given.
pub const DEFAULT_BUFFERED_BODY: u64 = 1 << 30;

#[derive(Debug)]
pub struct ServerSettings {
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub grace: Duration,
    /// Peers whose `X-Forwarded-For` is kept and extended instead of replaced.
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_keepalive_pool: usize,
    /// Whether idle worker threads steal tasks from busy ones (Tokio's
    /// multi-thread scheduler) or each thread keeps the connections it was
    /// given, as HAProxy's threads do.
    pub work_stealing: bool,
    /// `server.pid_file` when set; otherwise [`DEFAULT_PID_FILE`] is used,
    /// best effort (a read-only container root has no `/tmp`).
    pub pid_file: Option<PathBuf>,
    /// The Unix socket the listening sockets are handed over on.
    pub upgrade_socket: PathBuf,
}

/// Where the serving process writes its pid unless `server.pid_file` says,
/// for `obleth run --upgrade` to find the process it takes over from.
pub const DEFAULT_PID_FILE: &str = "/tmp/obleth.pid";

impl ServerSettings {
    /// The pid file `obleth run --upgrade` reads and a serving process writes.
    pub fn pid_file(&self) -> &Path {
        self.pid_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_PID_FILE))
    }
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub h2c: bool,
    pub client: ClientLimits,
    /// Whether connections must open with a PROXY protocol header.
    pub proxy_protocol: Option<ProxyProtocolSettings>,
}

/// `listeners[].proxy_protocol`: which relays may connect and speak for
/// their clients, as HAProxy's `accept-proxy` with its trusted sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolSettings {
    /// Each connection from these must start with a header; any other
    /// connection is closed.
    pub trusted: Vec<IpNet>,
    /// How long a relay may take to send its header.
    pub timeout: Duration,
}

/// How long and how much a client may take to send a request: what stops
/// slowloris heads, trickled bodies and oversized heads before they hold a
/// connection or a buffer for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request head must arrive within this (HAProxy's
    /// `timeout http-request`); on a kept-alive connection it runs from the
    /// head's first byte. 408 when it passes.
    pub http_request: Duration,
    /// Idle time allowed between requests on a kept-alive connection
    /// (`timeout http-keep-alive`).
    pub http_keep_alive: Duration,
    /// Longest wait for the next bytes of a request body (`timeout client`).
    pub client: Duration,
    /// Largest request head (request line and headers); 431 beyond it.
    pub max_head_bytes: usize,
    /// Bytes per second a request body must average once it has taken
    /// longer than `http_request`; 0 turns the check off. 408 below it.
    pub min_body_rate: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(60),
            client: Duration::from_secs(30),
            max_head_bytes: 64 * 1024,
            min_body_rate: 1024,
        }
    }
}

/// A TLS listener's certificates; the first is the default for clients
/// that send no SNI or one no certificate names.
#[derive(Debug)]
pub struct TlsFiles {
    pub certificates: Vec<CertificateFiles>,
}

/// One `listeners[].tls.certificates` entry (or `tls.cert`/`tls.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM: the certificate, then its chain.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Server names it is chosen for (`*.` wildcards one label deep);
    /// empty takes the names the certificate was issued for.
    pub names: Vec<String>,
}

/// `log.format`: obleth's own log lines as text for a terminal, or one JSON
/// object per line for a log aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One line in the manner of HAProxy's `option httplog`.
    Httplog,
    Json,
    Off,
}

#[derive(Debug)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// `None` writes to standard output.
    pub path: Option<PathBuf>,
}

/// A pool of upstream servers and how to pick among them.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub servers: Vec<ServerConfig>,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheckConfig>,
    pub timeouts: Timeouts,
    /// Further attempts on another server after the first one failed.
    pub retries: usize,
    /// Whether POST and other non-idempotent requests may be retried once
    /// they reached a server (connect failures are always retried).
    pub retry_non_idempotent: bool,
    /// Replaces the client's `Host` on the way upstream when set.
    pub host_header: Option<HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastInFlight,
    Random,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// As written, e.g. `api.example.com:443`.
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// Concurrent requests this server is given at most.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub rise: usize,
    /// Consecutive failures that take a server out.
    pub fall: usize,
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Http { path: String, expect_status: u16 },
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    /// Pingora applies one timeout to every read from the upstream: waiting
    /// for the response head and each gap between body chunks.
    pub read: Duration,
    pub write: Duration,
    /// Wall-clock bound on the whole upstream exchange, checked as each body
    /// chunk arrives (a silent upstream is bounded by `read`).
    pub total: Option<Duration>,
    pub idle_keepalive: Duration,
}
