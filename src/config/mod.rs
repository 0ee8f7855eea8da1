//! Configuration: the YAML file (plus `OBLETH_*` environment overrides) turned
//! into a validated [`Config`] before anything starts. Every problem found is
//! reported with file, line, column and the offending key.

mod locate;
mod raw;
mod routes;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use locate::{Position, PositionIndex};
use obleth_filters::admission::QueueOrder;
use raw::*;
pub use routes::*;

/// The validated configuration of one obleth process.
#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerConfig>,
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub access_log: AccessLogConfig,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub store: StoreConfig,
    pub redis: Option<RedisConfig>,
    pub admin_auth: AdminAuth,
    pub seed: Seed,
    pub budgets: BudgetSettings,
    pub admission: AdmissionSettings,
    pub telemetry: TelemetrySettings,
    /// `OBLETH_API_KEY_PEPPER`: mixed into every key hash.
    pub api_key_pepper: Option<String>,
    /// `OBLETH_ENCRYPTION_KEY`: seals upstream keys at rest.
    pub encryption_key: Option<String>,
}

/// Where tenants, keys, models and the audit log live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://FILE`.
    pub database_url: String,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
}

/// The shared Redis: hot key cache and cache invalidation across replicas.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Prepended to every Redis key and channel obleth uses.
    pub prefix: String,
}

/// How token budgets behave.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// Admit requests (and count them) when the budget store is
    /// unreachable; `false` answers 503 at once.
    pub fail_open: bool,
    /// Completion tokens reserved when a request gives no `max_tokens`.
    pub default_max_tokens: u64,
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

/// What LLM requests get while usage records would be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub keys: Vec<raw::SeedKey>,
}

/// Pingora replays at most 64 KiB of request body, and an LLM route reads
/// the body before choosing the upstream, so that is its ceiling.
pub const LLM_MAX_BODY: usize = 64 * 1024;

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
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub h2c: bool,
    pub client: ClientLimits,
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

#[derive(Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One problem found in a configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub position: Option<Position>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Pingora makes at most 16 attempts per request.
const MAX_RETRIES: usize = 15;

/// Environment variables that override keys of the file.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("OBLETH_LISTEN", "listeners[0].address"),
    ("OBLETH_ADMIN_LISTEN", "admin.address"),
    ("OBLETH_METRICS_LISTEN", "metrics.address"),
    ("OBLETH_THREADS", "server.threads"),
    ("OBLETH_GRACE", "server.grace"),
    ("OBLETH_ACCESS_LOG", "access_log.format"),
    ("OBLETH_ACCESS_LOG_PATH", "access_log.path"),
    ("OBLETH_DATABASE_URL", "store.database_url"),
    ("OBLETH_REDIS_URL", "redis.url"),
    ("OBLETH_FAIL_OPEN", "budgets.fail_open"),
    (
        "OBLETH_GLOBAL_MAX_IN_FLIGHT",
        "admission.global_max_in_flight",
    ),
    ("OBLETH_BROWNOUT_WAIT_MS", "admission.brownout_wait"),
    ("OBLETH_WAL_PATH", "telemetry.wal_path"),
    ("OBLETH_CLICKHOUSE_URL", "telemetry.clickhouse.url"),
];

impl Config {
    /// Reads, parses, applies environment overrides and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, path, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// Parses `text` as if read from `path`, with `env` answering for the
    /// environment (so tests need not touch the process environment).
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let mut raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text)
                .map_err(|e| ConfigError::Invalid(vec![serde_problem(&file, &e)]))?
        };
        let mut v = Validator {
            file,
            index: PositionIndex::build(text),
            problems: Vec::new(),
        };
        apply_env(&mut raw, &env, &mut v);
        let mut config = v.config(raw, path);
        config.admin_auth.token = env("OBLETH_ADMIN_TOKEN");
        config.api_key_pepper = env("OBLETH_API_KEY_PEPPER");
        config.encryption_key = env("OBLETH_ENCRYPTION_KEY");
        if let Some(ch) = config.telemetry.clickhouse.as_mut() {
            ch.connection.password = env("OBLETH_CLICKHOUSE_PASSWORD");
        }
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(v.problems))
        }
    }

    /// A human-readable account of what the file resolved to, for `obleth check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "file: {}", self.source.display());
        let s = &self.server;
        let _ = writeln!(
            out,
            "server: threads={} grace={:?} trusted_proxies={:?}",
            s.threads, s.grace, s.trusted_proxies
        );
        for l in &self.listeners {
            let tls = if l.tls.is_some() {
                " tls(h2,http/1.1)"
            } else if l.h2c {
                " h2c"
            } else {
                ""
            };
            let c = &l.client;
            let _ = writeln!(
                out,
                "listener {}: {}{tls} http_request={:?} http_keep_alive={:?} client={:?} max_head_bytes={} min_body_rate={}",
                l.name, l.address, c.http_request, c.http_keep_alive, c.client, c.max_head_bytes, c.min_body_rate
            );
        }
        let _ = writeln!(
            out,
            "admin: {}  metrics: {}",
            self.admin_address, self.metrics_address
        );
        let _ = writeln!(
            out,
            "access_log: {:?} -> {}",
            self.access_log.format,
            self.access_log
                .path
                .as_ref()
                .map_or("stdout".into(), |p| p.display().to_string())
        );
        for p in &self.pools {
            let t = &p.timeouts;
            let _ = writeln!(
                out,
                "pool {}: {:?}, retries={}, timeouts connect={:?} read={:?} total={:?}{}",
                p.name,
                p.algorithm,
                p.retries,
                t.connect,
                t.read,
                t.total,
                p.tls
                    .as_ref()
                    .map_or(String::new(), |t| format!(", tls sni={}", t.sni))
            );
            if let Some(h) = &p.health_check {
                let _ = writeln!(
                    out,
                    "  health check: {:?} every {:?}, timeout {:?}, rise {} fall {}",
                    h.kind, h.interval, h.timeout, h.rise, h.fall
                );
            }
            for srv in &p.servers {
                let _ = writeln!(
                    out,
                    "  server {} ({}) weight={} max_connections={}",
                    srv.name,
                    srv.address,
                    srv.weight,
                    srv.max_connections.map_or("-".into(), |m| m.to_string())
                );
            }
        }
        for r in &self.routes {
            let action = match &r.action {
                Action::Proxy(p) => format!("proxy -> {}", p.pool),
                Action::Redirect { status, .. } => format!("redirect {status}"),
                Action::Respond(f) => format!("respond {}", f.status),
                Action::Llm(l) => format!("llm (max body {} bytes)", l.max_body),
            };
            let m = &r.matcher;
            let condition = if m.is_catch_all() {
                "any request".to_string()
            } else {
                format!(
                    "hosts={:?} path={:?} methods={:?} headers={}",
                    m.hosts,
                    m.path,
                    m.methods,
                    m.headers.len()
                )
            };
            let _ = writeln!(out, "route {}: {condition} => {action}", r.name);
        }
        out
    }
}

fn serde_problem(file: &str, e: &serde_yaml::Error) -> Problem {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    Problem {
        file: file.to_string(),
        position: e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        }),
        key: String::new(),
        message,
    }
}

fn apply_env(raw: &mut RawConfig, env: &impl Fn(&str) -> Option<String>, v: &mut Validator) {
    if let Some(addr) = env("OBLETH_LISTEN") {
        match raw.listeners.first_mut() {
            Some(l) => l.address = addr,
            None => raw.listeners.push(RawListener {
                address: addr,
                ..RawListener::default()
            }),
        }
    }
    if let Some(addr) = env("OBLETH_ADMIN_LISTEN") {
        raw.admin.address = Some(addr);
    }
    if let Some(addr) = env("OBLETH_METRICS_LISTEN") {
        raw.metrics.address = Some(addr);
    }
    let mut number = |name: &str| -> Option<u64> {
        let text = env(name)?;
        let parsed = text.parse().ok();
        if parsed.is_none() {
            v.problems.push(Problem {
                file: "environment".into(),
                position: None,
                key: name.into(),
                message: format!("{text:?} is not a number"),
            });
        }
        parsed
    };
    if let Some(n) = number("OBLETH_THREADS") {
        raw.server.threads = Some(n as usize);
    }
    if let Some(n) = number("OBLETH_GLOBAL_MAX_IN_FLIGHT") {
        raw.admission.global_max_in_flight = Some(n.min(u64::from(u32::MAX)) as u32);
    }
    if let Some(ms) = number("OBLETH_BROWNOUT_WAIT_MS") {
        raw.admission.brownout_wait = Some(format!("{ms}ms"));
    }
    if let Some(grace) = env("OBLETH_GRACE") {
        raw.server.grace = Some(grace);
    }
    if let Some(format) = env("OBLETH_ACCESS_LOG") {
        raw.access_log.format = Some(format);
    }
    if let Some(path) = env("OBLETH_ACCESS_LOG_PATH") {
        raw.access_log.path = Some(path);
    }
    if let Some(url) = env("OBLETH_DATABASE_URL") {
        raw.store.database_url = Some(url);
    }
    if let Some(url) = env("OBLETH_REDIS_URL") {
        raw.redis.url = Some(url);
    }
    if let Some(path) = env("OBLETH_WAL_PATH") {
        raw.telemetry.wal_path = Some(path);
    }
    if let Some(url) = env("OBLETH_CLICKHOUSE_URL") {
        raw.telemetry
            .clickhouse
            .get_or_insert_with(Default::default)
            .url = Some(url);
    }
    if let Some(flag) = env("OBLETH_FAIL_OPEN") {
        match flag.as_str() {
            "true" | "1" => raw.budgets.fail_open = Some(true),
            "false" | "0" => raw.budgets.fail_open = Some(false),
            _ => v.problems.push(Problem {
                file: "environment".into(),
                position: None,
                key: "OBLETH_FAIL_OPEN".into(),
                message: format!("{flag:?} is not true or false"),
            }),
        }
    }
}

/// Collects problems while converting the raw file into a [`Config`].
struct Validator {
    file: String,
    index: PositionIndex,
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            position: self.index.find(key),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, text: Option<&str>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(
                        key,
                        format!("{t:?} is not a duration ({e}); write e.g. 500ms, 5s, 2m"),
                    );
                    default
                }
            },
        }
    }

    /// A duration where zero is meaningless (an interval, a timeout).
    fn positive_duration(&mut self, key: &str, text: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(key, text, default);
        if d.is_zero() {
            self.problem(key, "must be longer than zero");
            return default;
        }
        d
    }

    fn socket_addr(&mut self, key: &str, text: &str, default_port: Option<u16>) -> SocketAddr {
        let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
        let with_port = match default_port {
            Some(port) if !has_port(text) => format!("{text}:{port}"),
            _ => text.to_string(),
        };
        match with_port.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                self.problem(key, format!("{text:?} resolves to no address"));
                fallback
            }
            Err(e) => {
                self.problem(key, format!("{text:?} is not an address (host:port): {e}"));
                fallback
            }
        }
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let server = self.server(raw.server);
        let listeners = self.listeners(raw.listeners);
        let admin_address = self.socket_addr(
            "admin.address",
            raw.admin.address.as_deref().unwrap_or("127.0.0.1:9090"),
            None,
        );
        let metrics_address = self.socket_addr(
            "metrics.address",
            raw.metrics.address.as_deref().unwrap_or("0.0.0.0:9091"),
            None,
        );
        let access_log = self.access_log(raw.access_log);
        let pools = self.pools(raw.pools);
        let routes = self.routes(raw.routes, &pools);
        let store = StoreConfig {
            database_url: raw
                .store
                .database_url
                .unwrap_or_else(|| "sqlite://obleth.db".into()),
            migrate: raw.store.migrate.unwrap_or(true),
        };
        if crate::store::Backend::of(&store.database_url).is_none() {
            self.problem(
                "store.database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            );
        }
        let redis = raw.redis.url.map(|url| {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                self.problem(
                    "redis.url",
                    "must start with redis://, rediss:// or unix://",
                );
            }
            RedisConfig {
                url,
                prefix: raw.redis.prefix.clone().unwrap_or_else(|| "obleth:".into()),
            }
        });
        let seed = self.seed(raw.seed, &pools);
        let default_max_tokens = raw.budgets.default_max_tokens.unwrap_or(4096);
        if default_max_tokens == 0 {
            self.problem("budgets.default_max_tokens", "must be at least 1");
        }
        let budgets = BudgetSettings {
            fail_open: raw.budgets.fail_open.unwrap_or(true),
            default_max_tokens: default_max_tokens.max(1),
        };
        let admission = self.admission(&raw.admission);
        let telemetry = self.telemetry(&raw.telemetry);
        let mut endpoints: Vec<(String, SocketAddr)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].address"), l.address))
            .collect();
        endpoints.push(("admin.address".into(), admin_address));
        endpoints.push(("metrics.address".into(), metrics_address));
        for (i, (key, addr)) in endpoints.iter().enumerate() {
            if addr.port() != 0 && endpoints[..i].iter().any(|(_, a)| a == addr) {
                self.problem(key, format!("{addr} is already used by another endpoint"));
            }
        }
        Config {
            source: path.to_path_buf(),
            server,
            listeners,
            admin_address,
            metrics_address,
            access_log,
            pools,
            routes,
            store,
            redis,
            admin_auth: AdminAuth {
                token: None,
                generate_dev_token: raw.admin.generate_dev_token.unwrap_or(false),
            },
            seed,
            budgets,
            admission,
            telemetry,
            api_key_pepper: None,
            encryption_key: None,
        }
    }

    fn admission(&mut self, raw: &RawAdmission) -> AdmissionSettings {
        let global_max_in_flight = raw.global_max_in_flight.unwrap_or(64);
        if global_max_in_flight == 0 {
            self.problem("admission.global_max_in_flight", "must be at least 1");
        }
        let queue_per_pool = raw.queue_per_pool.unwrap_or(1024);
        let timeout = self.positive_duration(
            "admission.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(30),
        );
        let brownout_wait = self.duration(
            "admission.brownout_wait",
            raw.brownout_wait.as_deref(),
            Duration::from_millis(750),
        );
        let brownout_max_tokens = raw.brownout_max_tokens.unwrap_or(256);
        if brownout_max_tokens == 0 {
            self.problem("admission.brownout_max_tokens", "must be at least 1");
        }
        let order = match raw.order.as_deref() {
            None | Some("fair") => QueueOrder::Fair,
            Some("fifo") => QueueOrder::Fifo,
            Some(other) => {
                self.problem("admission.order", format!("{other:?} is not fair or fifo"));
                QueueOrder::Fair
            }
        };
        AdmissionSettings {
            order,
            global_max_in_flight: global_max_in_flight.max(1),
            queue_per_pool,
            timeout,
            brownout_wait: (!brownout_wait.is_zero()).then_some(brownout_wait),
            brownout_max_tokens: brownout_max_tokens.max(1),
        }
    }

    fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetrySettings {
        let segment_bytes = raw.segment_bytes.unwrap_or(16 << 20);
        let disk_cap_bytes = raw.disk_cap_bytes.unwrap_or(1 << 30);
        if segment_bytes < 4096 {
            self.problem("telemetry.segment_bytes", "must be at least 4096");
        }
        if disk_cap_bytes < segment_bytes {
            self.problem("telemetry.disk_cap_bytes", "must be at least segment_bytes");
        }
        let on_full = match raw.on_full.as_deref() {
            None | Some("serve") => OnFull::Serve,
            Some("refuse") => OnFull::Refuse,
            Some(other) => {
                self.problem(
                    "telemetry.on_full",
                    format!("{other:?} is not serve or refuse"),
                );
                OnFull::Serve
            }
        };
        let replica = raw.replica.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "obleth".into())
        });
        let clickhouse = raw.clickhouse.as_ref().and_then(|ch| {
            let Some(url) = ch.url.clone() else {
                self.problem("telemetry.clickhouse.url", "is required");
                return None;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.problem(
                    "telemetry.clickhouse.url",
                    "must be the HTTP interface: http://host:8123",
                );
            }
            let batch_rows = ch.batch_rows.unwrap_or(5000);
            if batch_rows == 0 {
                self.problem("telemetry.clickhouse.batch_rows", "must be at least 1");
            }
            Some(ClickHouseSettings {
                connection: obleth_filters::telemetry::ClickHouseConfig {
                    url,
                    database: ch.database.clone().unwrap_or_else(|| "obleth".into()),
                    user: ch.user.clone(),
                    password: None,
                    timeout: self.positive_duration(
                        "telemetry.clickhouse.timeout",
                        ch.timeout.as_deref(),
                        Duration::from_secs(10),
                    ),
                },
                shipping: obleth_filters::telemetry::ShipperConfig {
                    batch_rows: batch_rows.max(1),
                    batch_interval: self.positive_duration(
                        "telemetry.clickhouse.batch_interval",
                        ch.batch_interval.as_deref(),
                        Duration::from_secs(1),
                    ),
                    replica: replica.clone(),
                    max_backoff: Duration::from_secs(30),
                },
                retention_days: ch.retention_days.unwrap_or(0),
            })
        });
        if on_full == OnFull::Refuse && clickhouse.is_none() {
            self.problem(
                "telemetry.on_full",
                "refuse needs telemetry.clickhouse: without it nothing empties the log, and once full every LLM request would be refused",
            );
        }
        TelemetrySettings {
            wal: obleth_filters::telemetry::WalConfig {
                dir: PathBuf::from(raw.wal_path.as_deref().unwrap_or("obleth-wal")),
                segment_bytes,
                disk_cap_bytes,
                queue: raw.queue.unwrap_or(10_000).max(1),
            },
            on_full,
            replica,
            clickhouse,
        }
    }

    fn seed(&mut self, raw: RawSeed, pools: &[PoolConfig]) -> Seed {
        for (i, g) in raw.groups.iter().enumerate() {
            if let Err(e) = g.validate() {
                self.problem(&format!("seed.groups[{i}]"), e.to_string());
            }
        }
        for (i, t) in raw.tenants.iter().enumerate() {
            if let Err(e) = t.validate() {
                self.problem(&format!("seed.tenants[{i}]"), e.to_string());
            }
        }
        for (i, m) in raw.models.iter().enumerate() {
            let mut m = m.clone();
            if m.upstream_model.is_empty() {
                m.upstream_model = m.name.clone();
            }
            if let Err(e) = m.validate() {
                self.problem(&format!("seed.models[{i}]"), e.to_string());
            }
            if let Some(pool) = &m.pool {
                if !pools.iter().any(|p| &p.name == pool) {
                    self.problem(
                        &format!("seed.models[{i}].pool"),
                        format!("pool {pool:?} is not defined"),
                    );
                }
            }
        }
        self.model_namespace(&raw.models);
        for (i, k) in raw.keys.iter().enumerate() {
            if !k.secret.starts_with(obleth_filters::auth::SECRET_PREFIX) || k.secret.len() < 24 {
                self.problem(
                    &format!("seed.keys[{i}].secret"),
                    format!(
                        "must start with {:?} and be at least 24 characters",
                        obleth_filters::auth::SECRET_PREFIX
                    ),
                );
            }
        }
        Seed {
            groups: raw.groups,
            tenants: raw.tenants,
            models: raw
                .models
                .into_iter()
                .map(|mut m| {
                    if m.upstream_model.is_empty() {
                        m.upstream_model = m.name.clone();
                    }
                    m
                })
                .collect(),
            keys: raw.keys,
        }
    }

    /// Model names and aliases are one namespace: a request's `model`
    /// must resolve to exactly one model, or an alias could hand a tenant a
    /// model its allowlist does not name.
    fn model_namespace(&mut self, models: &[crate::store::ModelSpec]) {
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            if owners.insert(&m.name, &m.name).is_some() {
                self.problem(&format!("seed.models[{i}].name"), "duplicate model name");
            }
        }
        for (i, m) in models.iter().enumerate() {
            for (j, alias) in m.aliases.iter().enumerate() {
                let key = format!("seed.models[{i}].aliases[{j}]");
                match owners.get(alias.as_str()) {
                    Some(owner) if *owner == m.name => self.problem(
                        &key,
                        format!("{alias:?} repeats this model's name or one of its aliases"),
                    ),
                    Some(owner) => {
                        let message = format!("{alias:?} already names the model {owner:?}");
                        self.problem(&key, message)
                    }
                    None => {
                        owners.insert(alias, &m.name);
                    }
                }
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerSettings {
        let threads = raw
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            self.problem("server.threads", "must be at least 1");
        }
        let grace = self.duration(
            "server.grace",
            raw.grace.as_deref(),
            Duration::from_secs(30),
        );
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in raw.trusted_proxies.iter().enumerate() {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.problem(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR or IP address"),
                ),
            }
        }
        ServerSettings {
            threads: threads.max(1),
            grace,
            trusted_proxies,
            upstream_keepalive_pool: raw.upstream_keepalive_pool.unwrap_or(1024),
            work_stealing: raw.work_stealing.unwrap_or(true),
        }
    }

    fn listeners(&mut self, raw: Vec<RawListener>) -> Vec<ListenerConfig> {
        let raw = if raw.is_empty() {
            vec![RawListener {
                name: Some("http".into()),
                address: "0.0.0.0:8080".into(),
                ..RawListener::default()
            }]
        } else {
            raw
        };
        let mut names = HashSet::new();
        raw.into_iter()
            .enumerate()
            .map(|(i, l)| {
                let key = format!("listeners[{i}]");
                let client = self.client_limits(&key, &l);
                let name = l.name.unwrap_or_else(|| {
                    if l.tls.is_some() {
                        "https".into()
                    } else {
                        "http".into()
                    }
                });
                if !names.insert(name.clone()) {
                    self.problem(
                        &format!("{key}.name"),
                        format!("duplicate listener name {name:?}"),
                    );
                }
                let address = self.socket_addr(&format!("{key}.address"), &l.address, None);
                let tls = l.tls.map(|t| {
                    for (field, file) in [("cert", &t.cert), ("key", &t.key)] {
                        if !Path::new(file).is_file() {
                            self.problem(
                                &format!("{key}.tls.{field}"),
                                format!("{file:?} is not a readable file"),
                            );
                        }
                    }
                    TlsFiles {
                        cert: t.cert.into(),
                        key: t.key.into(),
                    }
                });
                ListenerConfig {
                    name,
                    address,
                    tls,
                    h2c: l.h2c,
                    client,
                }
            })
            .collect()
    }

    fn client_limits(&mut self, key: &str, l: &RawListener) -> ClientLimits {
        let defaults = ClientLimits::default();
        let t = &l.timeouts;
        let max_head_bytes = l.max_head_bytes.unwrap_or(defaults.max_head_bytes);
        if !(1024..=1 << 20).contains(&max_head_bytes) {
            self.problem(
                &format!("{key}.max_head_bytes"),
                "must be between 1024 and 1048576",
            );
        }
        ClientLimits {
            http_request: self.positive_duration(
                &format!("{key}.timeouts.http_request"),
                t.http_request.as_deref(),
                defaults.http_request,
            ),
            http_keep_alive: self.positive_duration(
                &format!("{key}.timeouts.http_keep_alive"),
                t.http_keep_alive.as_deref(),
                defaults.http_keep_alive,
            ),
            client: self.positive_duration(
                &format!("{key}.timeouts.client"),
                t.client.as_deref(),
                defaults.client,
            ),
            max_head_bytes: max_head_bytes.clamp(1024, 1 << 20),
            min_body_rate: l.min_body_rate.unwrap_or(defaults.min_body_rate),
        }
    }

    fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let format = match raw.format.as_deref().unwrap_or("httplog") {
            "httplog" => AccessLogFormat::Httplog,
            "json" => AccessLogFormat::Json,
            "off" => AccessLogFormat::Off,
            other => {
                self.problem(
                    "access_log.format",
                    format!("{other:?} is not one of httplog, json, off"),
                );
                AccessLogFormat::Off
            }
        };
        AccessLogConfig {
            format,
            path: raw.path.map(PathBuf::from),
        }
    }

    fn pools(&mut self, raw: Vec<RawPool>) -> Vec<PoolConfig> {
        let mut names = HashSet::new();
        let mut pools = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let key = format!("pools[{i}]");
            if !names.insert(p.name.clone()) {
                self.problem(
                    &format!("{key}.name"),
                    format!("duplicate pool name {:?}", p.name),
                );
            }
            pools.push(self.pool(&key, p));
        }
        pools
    }

    fn pool(&mut self, key: &str, p: RawPool) -> PoolConfig {
        let algorithm = match (
            p.algorithm.as_deref().unwrap_or("round_robin"),
            p.hash_key.as_deref(),
        ) {
            ("round_robin", None) => Algorithm::RoundRobin,
            ("least_in_flight", None) => Algorithm::LeastInFlight,
            ("random", None) => Algorithm::Random,
            ("consistent_hash", hash_key) => {
                Algorithm::ConsistentHash(self.hash_key(key, hash_key))
            }
            (_, Some(_)) => {
                self.problem(
                    &format!("{key}.hash_key"),
                    "only used with algorithm: consistent_hash",
                );
                Algorithm::RoundRobin
            }
            (other, None) => {
                self.problem(
                    &format!("{key}.algorithm"),
                    format!("{other:?} is not one of round_robin, least_in_flight, random, consistent_hash"),
                );
                Algorithm::RoundRobin
            }
        };
        if p.servers.is_empty() {
            self.problem(
                &format!("{key}.servers"),
                "a pool needs at least one server",
            );
        }
        let tls = p.tls.map(|t| UpstreamTls {
            sni: t.sni.unwrap_or_default(),
            verify: t.verify.unwrap_or(true),
        });
        let default_port = if tls.is_some() { 443 } else { 80 };
        let servers: Vec<ServerConfig> = p
            .servers
            .into_iter()
            .enumerate()
            .map(|(j, s)| {
                let skey = format!("{key}.servers[{j}]");
                let weight = s.weight.unwrap_or(1);
                if weight == 0 || weight > 1000 {
                    self.problem(&format!("{skey}.weight"), "must be between 1 and 1000");
                }
                if s.max_connections == Some(0) {
                    self.problem(&format!("{skey}.max_connections"), "must be at least 1");
                }
                ServerConfig {
                    address: self.socket_addr(
                        &format!("{skey}.address"),
                        &s.address,
                        Some(default_port),
                    ),
                    name: s.address,
                    weight: weight.clamp(1, 1000),
                    max_connections: s.max_connections,
                }
            })
            .collect();
        let tls = tls.map(|mut t| {
            if t.sni.is_empty() {
                t.sni = servers
                    .first()
                    .map(|s| host_of(&s.name).to_string())
                    .unwrap_or_default();
            }
            t
        });
        let health_check = p
            .health_check
            .map(|h| self.health_check(&format!("{key}.health_check"), h));
        let t = p.timeouts;
        let tkey = format!("{key}.timeouts");
        let timeouts = Timeouts {
            connect: self.positive_duration(
                &format!("{tkey}.connect"),
                t.connect.as_deref(),
                Duration::from_secs(2),
            ),
            read: self.positive_duration(
                &format!("{tkey}.read"),
                t.read.as_deref(),
                Duration::from_secs(60),
            ),
            write: self.positive_duration(
                &format!("{tkey}.write"),
                t.write.as_deref(),
                Duration::from_secs(60),
            ),
            total: t
                .total
                .as_deref()
                .map(|s| self.positive_duration(&format!("{tkey}.total"), Some(s), Duration::MAX)),
            idle_keepalive: self.positive_duration(
                &format!("{tkey}.idle_keepalive"),
                t.idle_keepalive.as_deref(),
                Duration::from_secs(60),
            ),
        };
        let host_header = p.host_header.and_then(|h| match HeaderValue::from_str(&h) {
            Ok(v) => Some(v),
            Err(_) => {
                self.problem(&format!("{key}.host_header"), "not a valid header value");
                None
            }
        });
        let retries = p.retries.unwrap_or(2);
        if retries > MAX_RETRIES {
            self.problem(&format!("{key}.retries"), format!("at most {MAX_RETRIES}"));
        }
        PoolConfig {
            name: p.name,
            algorithm,
            servers,
            tls,
            health_check,
            timeouts,
            retries: retries.min(MAX_RETRIES),
            retry_non_idempotent: p.retry_non_idempotent,
            host_header,
        }
    }

    fn hash_key(&mut self, pool_key: &str, text: Option<&str>) -> HashKey {
        let key = format!("{pool_key}.hash_key");
        match text.unwrap_or("client_ip") {
            "client_ip" => HashKey::ClientIp,
            other => {
                if let Some(name) = other.strip_prefix("header:") {
                    match HeaderName::from_bytes(name.trim().as_bytes()) {
                        Ok(h) => return HashKey::Header(h),
                        Err(_) => self.problem(&key, format!("{name:?} is not a header name")),
                    }
                } else if let Some(name) = other.strip_prefix("cookie:") {
                    return HashKey::Cookie(name.trim().to_string());
                } else {
                    self.problem(
                        &key,
                        format!("{other:?} is not client_ip, header:NAME or cookie:NAME"),
                    );
                }
                HashKey::ClientIp
            }
        }
    }

    fn health_check(&mut self, key: &str, h: RawHealthCheck) -> HealthCheckConfig {
        let kind = match h
            .kind
            .as_deref()
            .unwrap_or(if h.path.is_some() { "http" } else { "tcp" })
        {
            "http" => HealthCheckKind::Http {
                path: h.path.unwrap_or_else(|| "/".into()),
                expect_status: h.expect_status.unwrap_or(200),
            },
            "tcp" => HealthCheckKind::Tcp,
            other => {
                self.problem(
                    &format!("{key}.kind"),
                    format!("{other:?} is not http or tcp"),
                );
                HealthCheckKind::Tcp
            }
        };
        let rise = h.rise.unwrap_or(2);
        let fall = h.fall.unwrap_or(3);
        if rise == 0 {
            self.problem(&format!("{key}.rise"), "must be at least 1");
        }
        if fall == 0 {
            self.problem(&format!("{key}.fall"), "must be at least 1");
        }
        HealthCheckConfig {
            kind,
            interval: self.positive_duration(
                &format!("{key}.interval"),
                h.interval.as_deref(),
                Duration::from_secs(2),
            ),
            timeout: self.positive_duration(
                &format!("{key}.timeout"),
                h.timeout.as_deref(),
                Duration::from_secs(1),
            ),
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    fn routes(&mut self, raw: Vec<RawRoute>, pools: &[PoolConfig]) -> Vec<RouteConfig> {
        let mut names = HashSet::new();
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            if !names.insert(r.name.clone()) {
                self.problem(
                    &format!("{key}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            if let Some(prev) = routes.iter().find(|p| p.matcher.is_catch_all()) {
                self.problem(
                    &key,
                    format!(
                        "unreachable: route {:?} before it matches every request",
                        prev.name
                    ),
                );
            }
            let matcher = r
                .matcher
                .map(|m| self.matcher(&format!("{key}.match"), m))
                .unwrap_or_default();
            let action = self.action(&key, r.proxy, r.redirect, r.respond, r.llm, pools);
            routes.push(RouteConfig {
                name: r.name,
                matcher,
                action,
            });
        }
        routes
    }

    fn matcher(&mut self, key: &str, m: RawMatch) -> Matcher {
        let hosts = m
            .host
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .filter_map(|h| {
                HostPattern::parse(h)
                    .map_err(|e| self.problem(&format!("{key}.host"), e))
                    .ok()
            })
            .collect();
        let path = m.path.and_then(|p| {
            let pkey = format!("{key}.path");
            match (p.prefix, p.exact, p.regex) {
                (Some(prefix), None, None) => Some(PathPattern::Prefix(prefix)),
                (None, Some(exact), None) => Some(PathPattern::Exact(exact)),
                (None, None, Some(re)) => self
                    .regex(&format!("{pkey}.regex"), &re)
                    .map(PathPattern::Regex),
                _ => {
                    self.problem(&pkey, "give exactly one of prefix, exact, regex");
                    None
                }
            }
        });
        let methods = m
            .method
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .filter_map(
                |name| match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        self.problem(
                            &format!("{key}.method"),
                            format!("{name:?} is not an HTTP method"),
                        );
                        None
                    }
                },
            )
            .collect();
        let mut headers = Vec::new();
        for (j, h) in m.headers.into_iter().enumerate() {
            let hkey = format!("{key}.headers[{j}]");
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                self.problem(
                    &format!("{hkey}.name"),
                    format!("{:?} is not a header name", h.name),
                );
                continue;
            };
            let test = match (h.present, h.equals, h.regex) {
                (Some(true), None, None) => HeaderTest::Present,
                (Some(false), None, None) => HeaderTest::Absent,
                (None, Some(value), None) => HeaderTest::Equals(value),
                (None, None, Some(re)) => match self.regex(&format!("{hkey}.regex"), &re) {
                    Some(r) => HeaderTest::Regex(r),
                    None => continue,
                },
                _ => {
                    self.problem(&hkey, "give exactly one of present, equals, regex");
                    continue;
                }
            };
            headers.push(HeaderCondition { name, test });
        }
        Matcher {
            hosts,
            path,
            methods,
            headers,
        }
    }

    fn regex(&mut self, key: &str, text: &str) -> Option<Regex> {
        Regex::new(text)
            .map_err(|e| self.problem(key, format!("invalid regex: {e}")))
            .ok()
    }

    fn action(
        &mut self,
        key: &str,
        proxy: Option<RawProxy>,
        redirect: Option<RawRedirect>,
        respond: Option<RawRespond>,
        llm: Option<RawLlm>,
        pools: &[PoolConfig],
    ) -> Action {
        let fallback = || {
            Action::Respond(FixedResponse {
                status: 404,
                body: Bytes::new(),
                content_type: HeaderValue::from_static("text/plain"),
            })
        };
        match (proxy, redirect, respond, llm) {
            (None, None, None, Some(l)) => {
                let max_body = l.max_body.unwrap_or(LLM_MAX_BODY);
                if max_body == 0 || max_body > LLM_MAX_BODY {
                    self.problem(
                        &format!("{key}.llm.max_body"),
                        format!("must be between 1 and {LLM_MAX_BODY} bytes"),
                    );
                }
                Action::Llm(LlmAction {
                    max_body: max_body.clamp(1, LLM_MAX_BODY),
                })
            }
            (Some(p), None, None, None) => {
                let pkey = format!("{key}.proxy");
                if !pools.iter().any(|pool| pool.name == p.pool) {
                    self.problem(
                        &format!("{pkey}.pool"),
                        format!("pool {:?} is not defined", p.pool),
                    );
                }
                let rewrite_prefix = p.rewrite_prefix.map(|r| {
                    if !r.from.starts_with('/') || !r.to.starts_with('/') {
                        self.problem(
                            &format!("{pkey}.rewrite_prefix"),
                            "from and to must start with '/'",
                        );
                    }
                    (r.from, r.to)
                });
                Action::Proxy(ProxyAction {
                    pool: p.pool,
                    rewrite_prefix,
                    request_headers: self
                        .header_edits(&format!("{pkey}.request_headers"), p.request_headers),
                    response_headers: self
                        .header_edits(&format!("{pkey}.response_headers"), p.response_headers),
                })
            }
            (None, Some(r), None, None) => {
                let status = r.status.unwrap_or(302);
                if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                    self.problem(
                        &format!("{key}.redirect.status"),
                        format!("{status} is not one of 301, 302, 303, 307, 308"),
                    );
                }
                match Template::parse(&r.location) {
                    Ok(location) => Action::Redirect { status, location },
                    Err(e) => {
                        self.problem(&format!("{key}.redirect.location"), e);
                        fallback()
                    }
                }
            }
            (None, None, Some(r), None) => {
                if !(200..=599).contains(&r.status) {
                    self.problem(
                        &format!("{key}.respond.status"),
                        format!("{} is not a final response status (200 to 599)", r.status),
                    );
                }
                let content_type = r
                    .content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8");
                let content_type = HeaderValue::from_str(content_type).unwrap_or_else(|_| {
                    self.problem(
                        &format!("{key}.respond.content_type"),
                        "not a valid header value",
                    );
                    HeaderValue::from_static("text/plain")
                });
                Action::Respond(FixedResponse {
                    status: r.status,
                    body: Bytes::from(r.body),
                    content_type,
                })
            }
            _ => {
                self.problem(
                    key,
                    "a route needs exactly one action: proxy, redirect or respond",
                );
                fallback()
            }
        }
    }

    fn header_edits(&mut self, key: &str, raw: RawHeaderEdits) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for (name, value) in raw.set {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => edits.set.push((n, v)),
                _ => self.problem(
                    &format!("{key}.set.{name}"),
                    "not a valid header name and value",
                ),
            }
        }
        for (i, name) in raw.remove.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => edits.remove.push(n),
                Err(_) => self.problem(
                    &format!("{key}.remove[{i}]"),
                    format!("{name:?} is not a header name"),
                ),
            }
        }
        edits
    }
}

/// A URL with its password replaced, for printing.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn has_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

fn host_of(address: &str) -> &str {
    if has_port(address) {
        address.rsplit_once(':').map_or(address, |(h, _)| h)
    } else {
        address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"), |_| None)
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected an error"),
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    const GOOD: &str = "\
pools:
  - name: web
    algorithm: consistent_hash
    hash_key: header:x-user
    servers:
      - address: 127.0.0.1:8000
        weight: 3
routes:
  - name: api
    match:
      host: ['*.example.com']
      path: { prefix: /api }
      method: [get, POST]
      headers:
        - { name: x-canary, equals: '1' }
    proxy:
      pool: web
      rewrite_prefix: { from: /api, to: / }
  - name: tls
    redirect: { status: 301, location: 'https://{host}{uri}' }
";

    #[test]
    fn valid_file_is_converted_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.listeners[0].address.port(), 8080);
        assert_eq!(c.admin_address.port(), 9090);
        assert_eq!(c.metrics_address.port(), 9091);
        assert_eq!(
            c.pools[0].algorithm,
            Algorithm::ConsistentHash(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(c.pools[0].retries, 2);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].matcher.methods, vec![Method::GET, Method::POST]);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let p = problems("pools:\n  - name: a\n    servers: []\n    wieght: 3\n");
        assert!(p[0].starts_with("test.yaml:4:5: "), "{p:?}");
        assert!(p[0].contains("unknown field `wieght`"), "{p:?}");
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let p = problems("server:\n  threads: many\n");
        assert!(p[0].starts_with("test.yaml:2:"), "{p:?}");
        assert!(p[0].contains("threads"), "{p:?}");
    }

    #[test]
    fn missing_pool_is_reported_at_the_reference() {
        let text = GOOD.replace("pool: web", "pool: nope");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("test.yaml:17:7: routes[0].proxy.pool: pool \"nope\""),
            "{p:?}"
        );
    }

    #[test]
    fn duplicates_bad_durations_and_addresses_are_all_reported() {
        let text = "\
pools:
  - name: a
    servers: [{ address: 'not an address' }]
    timeouts: { connect: soon }
  - name: a
    servers: [{ address: '127.0.0.1:1' }]
routes:
  - name: r
    respond: { status: 200 }
  - name: r
    respond: { status: 204 }
";
        let p = problems(text).join("\n");
        assert!(
            p.contains("test.yaml:3:17: pools[0].servers[0].address"),
            "{p}"
        );
        assert!(
            p.contains("test.yaml:4:17: pools[0].timeouts.connect"),
            "{p}"
        );
        assert!(
            p.contains("test.yaml:5:5: pools[1].name: duplicate pool name"),
            "{p}"
        );
        assert!(p.contains("routes[1].name: duplicate route name"), "{p}");
        assert!(p.contains("test.yaml:10:5: routes[1]: unreachable"), "{p}");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let text =
            "listeners: [{ address: '127.0.0.1:1000' }]\nadmin: { address: '127.0.0.1:1001' }\n";
        let c = Config::parse(text, Path::new("t.yaml"), |name| match name {
            "OBLETH_LISTEN" => Some("127.0.0.1:2000".into()),
            "OBLETH_ADMIN_LISTEN" => Some("127.0.0.1:2001".into()),
            "OBLETH_ACCESS_LOG" => Some("json".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(c.listeners[0].address.port(), 2000);
        assert_eq!(c.admin_address.port(), 2001);
        assert_eq!(c.access_log.format, AccessLogFormat::Json);
    }

    #[test]
    fn admission_limits_come_from_the_file_or_the_environment() {
        let text = "admission: { global_max_in_flight: 8, timeout: 2s, brownout_wait: 1s }\n";
        let c = parse(text).expect("valid");
        assert_eq!(c.admission.global_max_in_flight, 8);
        assert_eq!(c.admission.brownout_wait, Some(Duration::from_secs(1)));
        assert_eq!(c.admission.brownout_max_tokens, 256);
        let env = |global: &'static str, wait: &'static str| {
            move |name: &str| match name {
                "OBLETH_GLOBAL_MAX_IN_FLIGHT" => Some(global.to_string()),
                "OBLETH_BROWNOUT_WAIT_MS" => Some(wait.to_string()),
                _ => None,
            }
        };
        let c = Config::parse(text, Path::new("t.yaml"), env("3", "0")).expect("valid");
        assert_eq!(c.admission.global_max_in_flight, 3);
        assert_eq!(c.admission.brownout_wait, None, "0 disables brownout");
        let Err(ConfigError::Invalid(p)) =
            Config::parse(text, Path::new("t.yaml"), env("lots", "5"))
        else {
            panic!("a bad number is refused");
        };
        assert!(
            p[0].to_string()
                .contains("OBLETH_GLOBAL_MAX_IN_FLIGHT: \"lots\" is not a number"),
            "{p:?}"
        );
        let p = problems("admission: { global_max_in_flight: 0, timeout: 0s }\n").join("\n");
        assert!(
            p.contains("test.yaml:1:14: admission.global_max_in_flight: must be at least 1"),
            "{p}"
        );
        assert!(
            p.contains("admission.timeout: must be longer than zero"),
            "{p}"
        );
    }

    #[test]
    fn route_needs_exactly_one_action() {
        let p = problems(
            "routes:\n  - name: r\n    respond: { status: 200 }\n    redirect: { location: /x }\n",
        );
        assert!(
            p[0].contains("test.yaml:2:5: routes[0]: a route needs exactly one action"),
            "{p:?}"
        );
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused_where_they_are_written() {
        let p = problems(
            "pools:
  - name: a
    servers: [{ address: '127.0.0.1:1' }]
    health_check: { interval: 0s, timeout: 0ms }
    timeouts: { connect: 0s, read: 0s, total: 0s }
",
        )
        .join("\n");
        for (at, key) in [
            ("4:21", "health_check.interval"),
            ("4:35", "health_check.timeout"),
            ("5:17", "timeouts.connect"),
            ("5:30", "timeouts.read"),
            ("5:40", "timeouts.total"),
        ] {
            assert!(
                p.contains(&format!(
                    "test.yaml:{at}: pools[0].{key}: must be longer than zero"
                )),
                "{key}: {p}"
            );
        }
    }

    #[test]
    fn respond_status_must_be_a_final_status() {
        for status in [100, 101, 199] {
            let p = problems(&format!(
                "routes:\n  - name: r\n    respond: {{ status: {status} }}\n"
            ));
            assert!(
                p[0].contains("routes[0].respond.status: ") && p[0].contains("200 to 599"),
                "{p:?}"
            );
        }
        assert!(parse("routes:\n  - name: r\n    respond: { status: 200 }\n").is_ok());
    }

    #[test]
    fn model_names_and_aliases_share_one_namespace_in_the_seed() {
        let p = problems(
            "pools: [{ name: p, servers: [{ address: '127.0.0.1:1' }] }]
seed:
  models:
    - { name: model-a, pool: p }
    - { name: model-b, pool: p, aliases: [b, model-a] }
    - { name: model-c, pool: p, aliases: [b, c, c] }
",
        )
        .join("\n");
        assert!(
            p.contains("test.yaml:5:46: seed.models[1].aliases[1]: \"model-a\" already names the model \"model-a\""),
            "{p}"
        );
        assert!(
            p.contains("seed.models[2].aliases[0]: \"b\" already names the model \"model-b\""),
            "{p}"
        );
        assert!(
            p.contains("seed.models[2].aliases[2]: \"c\" repeats this model's name"),
            "{p}"
        );
    }
}
