//! The YAML file as written by an operator. Every struct rejects unknown keys;
//! serde parses names of a fixed set (enums) and durations; what needs the
//! rest of the file to judge is checked and converted in `config::validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::settings::{AccessLogFormat, LogFormat, OnFull};
use obleth_filters::admission::QueueOrder;

/// A duration as written (`500ms`, `5s`, `2m`), parsed while the file is
/// read. A value that is not a duration keeps its error instead of failing the
/// parse, so the validator reports it beside every other problem of the file,
/// at its own line and column.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDuration(pub Result<Duration, String>);

impl RawDuration {
    /// Parses the text of a file value or an environment variable.
    pub fn parse(text: &str) -> Self {
        Self(
            humantime::parse_duration(text)
                .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 500ms, 5s, 2m")),
        )
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// A size in bytes: a number, or text with a unit (`64KiB`, `32MiB`,
/// `1GiB`; `KB`/`MB`/`GB` are powers of ten).
#[derive(Debug, Clone, PartialEq)]
pub struct RawBytes(pub Result<u64, String>);

impl RawBytes {
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let factor: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => Some(1),
            "kib" | "k" => Some(1 << 10),
            "mib" | "m" => Some(1 << 20),
            "gib" | "g" => Some(1 << 30),
            "kb" => Some(1_000),
            "mb" => Some(1_000_000),
            "gb" => Some(1_000_000_000),
            _ => None,
        };
        let value = number
            .parse::<u64>()
            .ok()
            .zip(factor)
            .and_then(|(n, f)| n.checked_mul(f));
        Self(value.ok_or_else(|| {
            format!("{text:?} is not a size; write bytes or e.g. 64KiB, 32MiB, 1GiB")
        }))
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(u64),
            Text(String),
        }
        Ok(match Given::deserialize(d)? {
            Given::Number(n) => Self(Ok(n)),
            Given::Text(t) => Self::parse(&t),
        })
    }
}

/// `pools[].algorithm`; `consistent_hash` takes its key from `hash_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    RoundRobin,
    LeastInFlight,
    Random,
    ConsistentHash,
}

/// `pools[].health_check.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckName {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawEndpoint,
    #[serde(default)]
    pub metrics: RawEndpoint,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub redis: RawRedis,
    #[serde(default)]
    pub seed: RawSeed,
    #[serde(default)]
    pub budgets: RawBudgets,
    #[serde(default)]
    pub admission: RawAdmission,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub tracing: RawTracing,
    #[serde(default)]
    pub dashboard: RawDashboard,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    pub enabled: Option<bool>,
    pub assets: Option<String>,
    pub session_ttl: Option<RawDuration>,
    pub secure_cookie: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    pub queue: Option<usize>,
    pub batch_spans: Option<usize>,
    pub batch_interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub wal_path: Option<String>,
    pub segment_bytes: Option<u64>,
    pub disk_cap_bytes: Option<u64>,
    pub queue: Option<usize>,
    pub durability: Option<obleth_filters::telemetry::Durability>,
    pub sync_interval: Option<RawDuration>,
    pub on_full: Option<OnFull>,
    pub replica: Option<String>,
    pub clickhouse: Option<RawClickHouse>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClickHouse {
    /// One server, or the replicas of `cluster` (failed over in order).
    pub url: Option<OneOrMany>,
    pub database: Option<String>,
    /// Creates the schema `ON CLUSTER` with replicated engines.
    pub cluster: Option<String>,
    pub user: Option<String>,
    pub batch_rows: Option<usize>,
    pub batch_interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub retention_days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    pub global_max_in_flight: Option<u32>,
    pub queue_per_pool: Option<usize>,
    pub timeout: Option<RawDuration>,
    pub brownout_wait: Option<RawDuration>,
    pub brownout_max_tokens: Option<u64>,
    pub order: Option<QueueOrder>,
    pub max_buffered_body: Option<RawBytes>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    pub fail_open: Option<bool>,
    pub default_max_tokens: Option<u64>,
    pub lease_ttl: Option<RawDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub database_url: Option<String>,
    pub migrate: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub mode: Option<RedisMode>,
    pub url: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub username: Option<String>,
    pub prefix: Option<String>,
    pub replica_acks: Option<u32>,
    pub replica_ack_timeout: Option<RawDuration>,
}

/// How Redis is deployed.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Standalone,
    Sentinel,
    Cluster,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSeed {
    #[serde(default)]
    pub groups: Vec<crate::store::Group>,
    #[serde(default)]
    pub tenants: Vec<crate::store::TenantSpec>,
    #[serde(default)]
    pub models: Vec<crate::store::ModelSpec>,
    #[serde(default)]
    pub mcp_servers: Vec<crate::store::McpServerSpec>,
    #[serde(default)]
    pub keys: Vec<SeedKey>,
}

/// A key with a fixed secret, for demos and tests; production keys are
/// created through the admin API and never written in a file.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SeedKey {
    pub tenant: String,
    pub name: String,
    pub secret: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub grace: Option<RawDuration>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub upstream_keepalive_pool: Option<usize>,
    pub work_stealing: Option<bool>,
    pub pid_file: Option<String>,
    pub upgrade_socket: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub address: String,
    pub tls: Option<RawListenerTls>,
    #[serde(default)]
    pub h2c: bool,
    #[serde(default)]
    pub timeouts: RawClientTimeouts,
    pub max_head_bytes: Option<usize>,
    pub min_body_rate: Option<u64>,
    pub proxy_protocol: Option<RawProxyProtocol>,
}

/// `listeners[].proxy_protocol`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    pub trusted: OneOrMany,
    pub timeout: Option<RawDuration>,
}

/// A listener's client-side timeouts, named as in HAProxy.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClientTimeouts {
    pub http_request: Option<RawDuration>,
    pub http_keep_alive: Option<RawDuration>,
    pub client: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub certificates: Option<Vec<RawCertificate>>,
}

/// One `listeners[].tls.certificates` entry, a `crt-list` line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: Option<String>,
    /// Admin only: generate and print a token when `OBLETH_ADMIN_TOKEN` is
    /// unset (the embedded development default).
    pub generate_dev_token: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub format: Option<AccessLogFormat>,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    pub algorithm: Option<AlgorithmName>,
    pub hash_key: Option<String>,
    pub servers: Vec<RawServerEntry>,
    pub tls: Option<RawUpstreamTls>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub retries: Option<usize>,
    #[serde(default)]
    pub retry_non_idempotent: bool,
    pub host_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerEntry {
    pub address: String,
    pub weight: Option<u32>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<HealthCheckName>,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub rise: Option<usize>,
    pub fall: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<RawDuration>,
    pub read: Option<RawDuration>,
    pub write: Option<RawDuration>,
    pub total: Option<RawDuration>,
    pub idle_keepalive: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub proxy: Option<RawProxy>,
    pub redirect: Option<RawRedirect>,
    pub respond: Option<RawRespond>,
    pub llm: Option<RawLlm>,
    pub deny_source: Option<OneOrMany>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub by: Option<String>,
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    pub max_body: Option<RawBytes>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<OneOrMany>,
    pub path: Option<RawPathMatch>,
    pub method: Option<OneOrMany>,
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
    pub source: Option<OneOrMany>,
}

/// A key that takes either one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    pub prefix: Option<String>,
    pub exact: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub present: Option<bool>,
    pub equals: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub pool: String,
    pub rewrite_prefix: Option<RawRewritePrefix>,
    #[serde(default)]
    pub request_headers: RawHeaderEdits,
    #[serde(default)]
    pub response_headers: RawHeaderEdits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewritePrefix {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<u16>,
    pub location: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<String>,
}
