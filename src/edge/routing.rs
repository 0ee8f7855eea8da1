//! Routes: an ordered list of matchers and actions; the first route whose
//! matcher accepts a request decides what happens to it, as HAProxy's ordered
//! `use_backend` / `http-request redirect` rules do.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{
    HeaderCondition, HeaderEdits, HeaderTest, HostPattern, LimitKey, Matcher, PathPattern,
    RouteConfig, Template, TemplatePart,
};
use crate::edge::pool::Pool;
use crate::edge::rate_limit::RateLimiter;
use crate::metrics::RouteMetrics;

impl HeaderEdits {
    pub fn apply_to_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        for name in &self.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.set {
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    pub fn apply_to_response(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        for name in &self.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.set {
            resp.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

impl Template {
    pub fn render(&self, req: &RequestView<'_>, scheme: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Scheme => out.push_str(scheme),
                TemplatePart::Host => out.push_str(&req.host),
                TemplatePart::Path => out.push_str(req.path),
                TemplatePart::Query => {
                    if let Some(q) = req.query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
                TemplatePart::Uri => {
                    out.push_str(req.path);
                    if let Some(q) = req.query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
        out
    }
}

/// The parts of a request that routing looks at, extracted once.
pub struct RequestView<'a> {
    pub header: &'a RequestHeader,
    /// Lower-case host without port (empty when the request names none).
    pub host: Cow<'a, str>,
    pub host_with_port: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The client's address, as source rules see it: set only when a route
    /// of the table has one ([`RouteTable::needs_client`]).
    pub client: Option<IpAddr>,
}

impl<'a> RequestView<'a> {
    pub fn new(header: &'a RequestHeader) -> Self {
        let host_with_port = header
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                header
                    .headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("");
        let host = strip_port(host_with_port);
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        Self {
            header,
            host,
            host_with_port,
            path: header.uri.path(),
            query: header.uri.query(),
            client: None,
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

impl Matcher {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&req.header.method) {
            return false;
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.matches(&req.host)) {
            return false;
        }
        if let Some(path) = &self.path {
            if !path.matches(req.path) {
                return false;
            }
        }
        if !self.sources.is_empty() && !req.client.is_some_and(|ip| in_any(&self.sources, ip)) {
            return false;
        }
        self.headers.iter().all(|c| c.matches(req.header))
    }

    pub fn is_catch_all(&self) -> bool {
        self.hosts.is_empty()
            && self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.sources.is_empty()
    }
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Exact(p) => path == p,
            PathPattern::Regex(r) => r.is_match(path),
        }
    }
}

impl HeaderCondition {
    fn matches(&self, header: &RequestHeader) -> bool {
        let mut values = header.headers.get_all(&self.name).iter();
        match &self.test {
            HeaderTest::Present => values.next().is_some(),
            HeaderTest::Absent => values.next().is_none(),
            HeaderTest::Equals(expected) => values.any(|v| v.as_bytes() == expected.as_bytes()),
            HeaderTest::Regex(r) => values.any(|v| v.to_str().is_ok_and(|s| r.is_match(s))),
        }
    }
}

/// A route ready to serve: its configuration, its resolved pool and its
/// pre-registered metric handles.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    pub pool: Option<Arc<Pool>>,
    pub metrics: RouteMetrics,
    pub rate_limiter: Option<RateLimiter>,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether `deny_source` refuses a request from `client`.
    pub fn denies(&self, client: Option<IpAddr>) -> bool {
        let deny = &self.config.deny_sources;
        !deny.is_empty() && client.is_some_and(|ip| in_any(deny, ip))
    }
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    // A v4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The ordered routes of one configuration generation.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    needs_client: bool,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let needs_client = routes.iter().any(|r| {
            !r.config.matcher.sources.is_empty()
                || !r.config.deny_sources.is_empty()
                || r.config
                    .rate_limit
                    .as_ref()
                    .is_some_and(|l| l.by == LimitKey::ClientIp)
        });
        Self {
            routes,
            needs_client,
        }
    }

    /// Whether a route has source rules, so matching needs the client's
    /// address (worked out only then).
    pub fn needs_client(&self) -> bool {
        self.needs_client
    }

    /// The first route that matches, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.config.matcher.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderName;
    use regex::Regex;

    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn host_patterns_match_exact_and_suffix_ignoring_port_and_case() {
        let exact = HostPattern::parse("API.example.com").unwrap();
        let suffix = HostPattern::parse("*.example.com").unwrap();
        let req = request("GET", "/", &[("host", "Api.Example.com:8080")]);
        let view = RequestView::new(&req);
        assert_eq!(view.host, "api.example.com");
        assert!(exact.matches(&view.host));
        assert!(suffix.matches(&view.host));
        assert!(!suffix.matches("example.com"));
        assert!(HostPattern::parse("a.*.com").is_err());
    }

    #[test]
    fn header_conditions_cover_present_absent_equals_regex() {
        let req = request("GET", "/", &[("x-canary", "yes"), ("x-user", "u-42")]);
        let cond = |test| HeaderCondition {
            name: HeaderName::from_static("x-canary"),
            test,
        };
        assert!(cond(HeaderTest::Present).matches(&req));
        assert!(!cond(HeaderTest::Absent).matches(&req));
        assert!(cond(HeaderTest::Equals("yes".into())).matches(&req));
        assert!(!cond(HeaderTest::Equals("no".into())).matches(&req));
        assert!(cond(HeaderTest::Regex(Regex::new("^y").unwrap())).matches(&req));
    }

    #[test]
    fn template_renders_placeholders() {
        let t = Template::parse("https://{host}{uri}").unwrap();
        let req = request("GET", "/a/b?x=1", &[("host", "example.com:80")]);
        let view = RequestView::new(&req);
        assert_eq!(t.render(&view, "http"), "https://example.com/a/b?x=1");
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{host").is_err());
    }

    #[test]
    fn strip_port_handles_ipv6_and_plain_names() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com:443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
