//! Validation of the edge plane: listeners and their client limits, pools,
//! health checks and routes.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use super::raw::*;
use super::validate::{parse_cidr, MAX_RETRIES};
use super::*;

impl Validator {
    pub(super) fn listeners(&mut self, raw: Vec<RawListener>) -> Vec<ListenerConfig> {
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
                let tls = l.tls.map(|t| self.listener_tls(&key, t));
                let proxy_protocol = l.proxy_protocol.map(|p| {
                    let at = format!("{key}.proxy_protocol.trusted");
                    let trusted = self.sources(&at, Some(p.trusted));
                    if trusted.is_empty() {
                        self.problem(
                            &at,
                            "name at least one relay; every other source is refused",
                        );
                    }
                    ProxyProtocolSettings {
                        trusted,
                        timeout: self.positive_duration(
                            &format!("{key}.proxy_protocol.timeout"),
                            p.timeout.as_ref(),
                            Duration::from_secs(3),
                        ),
                    }
                });
                ListenerConfig {
                    name,
                    address,
                    tls,
                    h2c: l.h2c,
                    client,
                    proxy_protocol,
                }
            })
            .collect()
    }

    /// `tls: {cert, key}` for one certificate, or `tls.certificates` for
    /// a list chosen by SNI; the files must exist (they are loaded, and
    /// their keys checked against their certificates, at start-up).
    fn listener_tls(&mut self, key: &str, t: RawListenerTls) -> TlsFiles {
        let mut certificates = Vec::new();
        match (t.cert, t.key, t.certificates) {
            (Some(cert), Some(key_file), None) => certificates.push(RawCertificate {
                cert,
                key: key_file,
                names: Vec::new(),
            }),
            (None, None, Some(list)) if !list.is_empty() => certificates = list,
            (None, None, Some(_)) => {
                self.problem(&format!("{key}.tls.certificates"), "must not be empty")
            }
            (_, _, Some(_)) => self.problem(
                &format!("{key}.tls"),
                "give either cert and key or certificates, not both",
            ),
            _ => self.problem(
                &format!("{key}.tls"),
                "needs cert and key, or a certificates list",
            ),
        }
        let single = certificates.len() == 1;
        let certificates = certificates
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let at = if single && c.names.is_empty() {
                    format!("{key}.tls")
                } else {
                    format!("{key}.tls.certificates[{i}]")
                };
                for (field, file) in [("cert", &c.cert), ("key", &c.key)] {
                    if !Path::new(file).is_file() {
                        self.problem(
                            &format!("{at}.{field}"),
                            format!("{file:?} is not a readable file"),
                        );
                    }
                }
                for (j, name) in c.names.iter().enumerate() {
                    if !valid_server_name(name) {
                        self.problem(
                            &format!("{at}.names[{j}]"),
                            format!(
                                "{name:?} is not a host name (a leading \"*.\" makes a wildcard)"
                            ),
                        );
                    }
                }
                CertificateFiles {
                    cert: c.cert.into(),
                    key: c.key.into(),
                    names: c.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                }
            })
            .collect();
        TlsFiles { certificates }
    }

    pub(super) fn client_limits(&mut self, key: &str, l: &RawListener) -> ClientLimits {
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
                t.http_request.as_ref(),
                defaults.http_request,
            ),
            http_keep_alive: self.positive_duration(
                &format!("{key}.timeouts.http_keep_alive"),
                t.http_keep_alive.as_ref(),
                defaults.http_keep_alive,
            ),
            client: self.positive_duration(
                &format!("{key}.timeouts.client"),
                t.client.as_ref(),
                defaults.client,
            ),
            max_head_bytes: max_head_bytes.clamp(1024, 1 << 20),
            min_body_rate: l.min_body_rate.unwrap_or(defaults.min_body_rate),
        }
    }

    pub(super) fn pools(&mut self, raw: Vec<RawPool>) -> Vec<PoolConfig> {
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

    pub(super) fn pool(&mut self, key: &str, p: RawPool) -> PoolConfig {
        let algorithm = match (
            p.algorithm.unwrap_or(AlgorithmName::RoundRobin),
            &p.hash_key,
        ) {
            (AlgorithmName::ConsistentHash, hash_key) => {
                Algorithm::ConsistentHash(self.hash_key(key, hash_key.as_deref()))
            }
            (_, Some(_)) => {
                self.problem(
                    &format!("{key}.hash_key"),
                    "only used with algorithm: consistent_hash",
                );
                Algorithm::RoundRobin
            }
            (AlgorithmName::RoundRobin, None) => Algorithm::RoundRobin,
            (AlgorithmName::LeastInFlight, None) => Algorithm::LeastInFlight,
            (AlgorithmName::Random, None) => Algorithm::Random,
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
        // A server is named by its address (in the admin API, logs and
        // metrics) and found by it on the hash ring and across reloads.
        for (j, s) in servers.iter().enumerate() {
            let twin = servers[..j].iter().position(|o| {
                o.name == s.name || (o.address == s.address && s.address.port() != 0)
            });
            if let Some(first) = twin {
                self.problem(
                    &format!("{key}.servers[{j}].address"),
                    format!(
                        "the same server as servers[{first}] ({}); give it a higher weight instead",
                        s.address
                    ),
                );
            }
        }
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
                t.connect.as_ref(),
                Duration::from_secs(2),
            ),
            read: self.positive_duration(
                &format!("{tkey}.read"),
                t.read.as_ref(),
                Duration::from_secs(60),
            ),
            write: self.positive_duration(
                &format!("{tkey}.write"),
                t.write.as_ref(),
                Duration::from_secs(60),
            ),
            total: t
                .total
                .as_ref()
                .map(|d| self.positive_duration(&format!("{tkey}.total"), Some(d), Duration::MAX)),
            idle_keepalive: self.positive_duration(
                &format!("{tkey}.idle_keepalive"),
                t.idle_keepalive.as_ref(),
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

    pub(super) fn hash_key(&mut self, pool_key: &str, text: Option<&str>) -> HashKey {
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

    pub(super) fn health_check(&mut self, key: &str, h: RawHealthCheck) -> HealthCheckConfig {
        let default_kind = if h.path.is_some() {
            HealthCheckName::Http
        } else {
            HealthCheckName::Tcp
        };
        let kind = match h.kind.unwrap_or(default_kind) {
            HealthCheckName::Http => HealthCheckKind::Http {
                path: h.path.unwrap_or_else(|| "/".into()),
                expect_status: h.expect_status.unwrap_or(200),
            },
            HealthCheckName::Tcp => HealthCheckKind::Tcp,
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
                h.interval.as_ref(),
                Duration::from_secs(2),
            ),
            timeout: self.positive_duration(
                &format!("{key}.timeout"),
                h.timeout.as_ref(),
                Duration::from_secs(1),
            ),
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub(super) fn routes(&mut self, raw: Vec<RawRoute>, pools: &[PoolConfig]) -> Vec<RouteConfig> {
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
            let deny_sources = self.sources(&format!("{key}.deny_source"), r.deny_source);
            let rate_limit = r
                .rate_limit
                .and_then(|l| self.rate_limit(&format!("{key}.rate_limit"), l));
            routes.push(RouteConfig {
                name: r.name,
                matcher,
                action,
                deny_sources,
                rate_limit,
            });
        }
        routes
    }

    pub(super) fn matcher(&mut self, key: &str, m: RawMatch) -> Matcher {
        let hosts = m
            .host
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .filter_map(|h| {
                HostPattern::parse(h)
                    .map_err(|e| self.problem(&format!("{key}.host"), e.to_string()))
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
        let sources = self.sources(&format!("{key}.source"), m.source);
        Matcher {
            hosts,
            path,
            methods,
            headers,
            sources,
        }
    }

    fn rate_limit(&mut self, key: &str, raw: RawRateLimit) -> Option<RateLimitConfig> {
        let by = match raw.by.as_deref().unwrap_or("client_ip") {
            "client_ip" => LimitKey::ClientIp,
            "key" => LimitKey::Key,
            other => match other
                .strip_prefix("header:")
                .map(|n| HeaderName::from_bytes(n.as_bytes()))
            {
                Some(Ok(name)) => LimitKey::Header(name),
                _ => {
                    self.problem(
                        &format!("{key}.by"),
                        format!("{other:?}: expected client_ip, key or header:NAME"),
                    );
                    return None;
                }
            },
        };
        let Some(requests_per_second) = raw.requests_per_second.filter(|n| *n > 0) else {
            self.problem(
                &format!("{key}.requests_per_second"),
                "is required and must be at least 1",
            );
            return None;
        };
        Some(RateLimitConfig {
            by,
            requests_per_second,
            burst: raw.burst.unwrap_or(0),
        })
    }

    /// CIDRs (or single addresses) of client sources.
    fn sources(&mut self, key: &str, raw: Option<OneOrMany>) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in raw
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match parse_cidr(text) {
                Some(net) => nets.push(net),
                None => self.problem(
                    &format!("{key}[{i}]"),
                    format!("{text:?} is not a CIDR or IP address"),
                ),
            }
        }
        nets
    }

    pub(super) fn regex(&mut self, key: &str, text: &str) -> Option<Regex> {
        Regex::new(text)
            .map_err(|e| self.problem(key, format!("invalid regex: {e}")))
            .ok()
    }

    pub(super) fn action(
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
                let max_body = self.size(
                    &format!("{key}.llm.max_body"),
                    l.max_body.as_ref(),
                    LLM_DEFAULT_BODY,
                    LLM_MAX_BODY,
                );
                Action::Llm(LlmAction {
                    max_body: max_body as usize,
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
                        self.problem(&format!("{key}.redirect.location"), e.to_string());
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

    pub(super) fn header_edits(&mut self, key: &str, raw: RawHeaderEdits) -> HeaderEdits {
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

/// A DNS name a client may send as SNI, or `*.` and one: what
/// `tls.certificates[].names` takes.
pub fn valid_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
