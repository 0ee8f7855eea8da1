//! Raw file → validated configuration: the rules shared by both planes and
//! the top-level assembly.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::locate::PositionIndex;
use super::raw::*;
use super::*;

/// Pingora makes at most 16 attempts per request.
pub(super) const MAX_RETRIES: usize = 15;

/// Collects problems while converting the raw file into a [`Config`].
pub(super) struct Validator {
    pub(super) file: String,
    pub(super) index: PositionIndex,
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            position: self.index.find(key),
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(RawDuration(Ok(d))) => *d,
            Some(RawDuration(Err(message))) => {
                self.problem(key, message.clone());
                default
            }
        }
    }

    /// A size in bytes from `1` to `max`.
    pub(super) fn size(
        &mut self,
        key: &str,
        raw: Option<&RawBytes>,
        default: u64,
        max: u64,
    ) -> u64 {
        match raw {
            None => default,
            Some(RawBytes(Ok(n))) if (1..=max).contains(n) => *n,
            Some(RawBytes(Ok(_))) => {
                self.problem(key, format!("must be between 1 and {max} bytes"));
                default
            }
            Some(RawBytes(Err(message))) => {
                self.problem(key, message.clone());
                default
            }
        }
    }

    /// A duration where zero is meaningless (an interval, a timeout).
    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        raw: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, raw, default);
        if d.is_zero() {
            self.problem(key, "must be longer than zero");
            return default;
        }
        d
    }

    pub(super) fn socket_addr(
        &mut self,
        key: &str,
        text: &str,
        default_port: Option<u16>,
    ) -> SocketAddr {
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

    pub(super) fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
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
        let redis = self.redis(raw.redis);
        let seed = self.seed(raw.seed, &pools);
        let default_max_tokens = raw.budgets.default_max_tokens.unwrap_or(4096);
        if default_max_tokens == 0 {
            self.problem("budgets.default_max_tokens", "must be at least 1");
        }
        let lease_ttl = self.duration(
            "budgets.lease_ttl",
            raw.budgets.lease_ttl.as_ref(),
            obleth_filters::budget::LEASE_TTL,
        );
        if lease_ttl < Duration::from_secs(2) {
            self.problem(
                "budgets.lease_ttl",
                "must be at least 2s (a lease is renewed at a third of it)",
            );
        }
        let budgets = BudgetSettings {
            fail_open: raw.budgets.fail_open.unwrap_or(true),
            default_max_tokens: default_max_tokens.max(1),
            lease_ttl,
        };
        let admission = self.admission(&raw.admission);
        for (i, route) in routes.iter().enumerate() {
            if let Action::Llm(llm) = &route.action {
                if llm.max_body > admission.max_buffered_body {
                    self.problem(
                        &format!("routes[{i}].llm.max_body"),
                        format!(
                            "is larger than admission.max_buffered_body ({} bytes): such a body could never be read",
                            admission.max_buffered_body
                        ),
                    );
                }
            }
        }
        let telemetry = self.telemetry(&raw.telemetry);
        let tracing = self.tracing(&raw.tracing);
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
            log_format: raw.log.format.unwrap_or_default(),
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
            tracing,
            api_key_pepper: None,
            encryption_key: None,
            dashboard: DashboardSettings {
                enabled: raw.dashboard.enabled,
                assets: raw.dashboard.assets.map(std::path::PathBuf::from),
                session_ttl: self.positive_duration(
                    "dashboard.session_ttl",
                    raw.dashboard.session_ttl.as_ref(),
                    Duration::from_secs(12 * 3600),
                ),
                secure_cookie: raw.dashboard.secure_cookie.unwrap_or(false),
                password: None,
                session_secret: None,
            },
        }
    }

    /// Tracing is on once an endpoint is named; the other keys tune it.
    fn tracing(&mut self, raw: &RawTracing) -> Option<TracingSettings> {
        let base = raw.endpoint.as_deref()?.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            self.problem(
                "tracing.endpoint",
                "must be an OTLP/HTTP base URL: http://collector:4318",
            );
        }
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.problem("tracing.sample_ratio", "must be between 0 and 1");
        }
        let at_least_one = |v: &mut Self, key: &str, value: Option<usize>, default: usize| {
            let n = value.unwrap_or(default);
            if n == 0 {
                v.problem(key, "must be at least 1");
            }
            n.max(1)
        };
        Some(TracingSettings {
            endpoint: format!("{base}/v1/traces"),
            service_name: raw.service_name.clone().unwrap_or_else(|| "obleth".into()),
            sample_ratio,
            queue: at_least_one(self, "tracing.queue", raw.queue, 4096),
            batch_spans: at_least_one(self, "tracing.batch_spans", raw.batch_spans, 512),
            batch_interval: self.positive_duration(
                "tracing.batch_interval",
                raw.batch_interval.as_ref(),
                Duration::from_secs(1),
            ),
            timeout: self.positive_duration(
                "tracing.timeout",
                raw.timeout.as_ref(),
                Duration::from_secs(5),
            ),
        })
    }

    pub(super) fn server(&mut self, raw: RawServer) -> ServerSettings {
        let threads = raw
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            self.problem("server.threads", "must be at least 1");
        }
        let grace = self.duration("server.grace", raw.grace.as_ref(), Duration::from_secs(30));
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in raw.trusted_proxies.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => trusted_proxies.push(net),
                None => self.problem(
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
            pid_file: raw.pid_file.map(PathBuf::from),
            upgrade_socket: raw
                .upgrade_socket
                .unwrap_or_else(|| "/tmp/obleth_upgrade.sock".into())
                .into(),
        }
    }

    pub(super) fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let format = raw.format.unwrap_or(AccessLogFormat::Httplog);
        AccessLogConfig {
            format,
            path: raw.path.map(PathBuf::from),
        }
    }
}

/// A CIDR, or a single address as the network of just that address.
pub(super) fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .ok()
}
