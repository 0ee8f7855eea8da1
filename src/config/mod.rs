//! Configuration: the YAML file (plus `OBLETH_*` environment overrides) turned
//! into a validated [`Config`] before anything starts. Every problem found is
//! reported with file, line, column and the offending key.
//!
//! - `settings`: the validated form the rest of obleth reads.
//! - `routes`: route definitions (matchers and actions) as data.
//! - `raw`: the file as written (serde), `locate`: where each key is.
//! - `env`: the `OBLETH_*` overrides.
//! - `validate`: raw → validated, shared rules; `validate_edge` for
//!   listeners, pools, health checks and routes; `validate_llm` for the
//!   store, budgets, admission, telemetry and the seed.
//! - `summary`: what `obleth check` prints.

mod env;
mod locate;
mod raw;
mod routes;
mod settings;
mod summary;
mod validate;
mod validate_edge;
mod validate_llm;

use std::fmt;
use std::path::Path;

use env::apply_env;
pub use env::ENV_OVERRIDES;
use locate::{Position, PositionIndex};
use raw::RawConfig;
pub use routes::*;
pub use settings::*;
use validate::Validator;
pub use validate_edge::valid_server_name;

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

    /// Whether a route is an LLM route: only then does obleth start the
    /// LLM plane (store, key cache, budgets, admission, usage log).
    pub fn declares_llm(&self) -> bool {
        self.routes
            .iter()
            .any(|r| matches!(r.action, Action::Llm(_)))
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
            serde_norway::from_str(text)
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
        config.dashboard.password = env("DASHBOARD_PASSWORD");
        config.dashboard.session_secret = env("DASHBOARD_SESSION_SECRET");
        if let Some(ch) = config.telemetry.clickhouse.as_mut() {
            ch.connection.password = env("OBLETH_CLICKHOUSE_PASSWORD");
        }
        if let Some(redis) = config.redis.as_mut() {
            use obleth_filters::redis_link::Topology;
            if let Topology::Sentinel { auth, .. } | Topology::Cluster { auth, .. } =
                &mut redis.topology
            {
                auth.password = env("OBLETH_REDIS_PASSWORD");
            }
        }
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(v.problems))
        }
    }
}

fn serde_problem(file: &str, e: &serde_norway::Error) -> Problem {
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
    use std::path::Path;
    use std::time::Duration;

    use http::header::HeaderName;
    use http::Method;

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
    fn a_server_listed_twice_in_a_pool_is_reported() {
        let text = "\
pools:
  - name: a
    servers:
      - address: '127.0.0.1:81'
      - address: 'localhost:81'
      - address: '127.0.0.1:81'
";
        let p = problems(text).join("\n");
        assert!(
            p.contains("test.yaml:5:9: pools[0].servers[1].address: the same server as servers[0]"),
            "{p}"
        );
        assert!(p.contains("pools[0].servers[2].address"), "{p}");
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
