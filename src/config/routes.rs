//! Routes as the configuration describes them: matchers and actions, data
//! only. `edge::routing` matches requests against them and carries out the
//! actions.

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

/// A route as validated from the configuration.
#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
    /// Client addresses this route answers 403 (`deny_source`).
    pub deny_sources: Vec<IpNet>,
    pub rate_limit: Option<RateLimitConfig>,
}

/// A per-client request rate limit (`routes[].rate_limit`).
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub by: LimitKey,
    pub requests_per_second: u32,
    /// Requests a client may make above the rate for a short while.
    pub burst: u32,
}

/// What tells the clients of a rate limit apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address (behind trusted proxies, the one they name).
    ClientIp,
    /// The value of a request header.
    Header(HeaderName),
    /// The API key presented (`Authorization` or `x-api-key`).
    Key,
}

/// Conditions that must all hold for a route to match; an empty matcher
/// matches every request (the default route).
#[derive(Debug, Default)]
pub struct Matcher {
    pub hosts: Vec<HostPattern>,
    pub path: Option<PathPattern>,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderCondition>,
    /// Client addresses the route is for (`match.source`), empty for all.
    pub sources: Vec<IpNet>,
}

/// A host name pattern; matching ignores case and any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any name ending with it.
    Suffix(String),
}

#[derive(Debug)]
pub enum PathPattern {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub test: HeaderTest,
}

#[derive(Debug)]
pub enum HeaderTest {
    Present,
    Absent,
    Equals(String),
    Regex(Regex),
}

/// What a matched route does with the request.
#[derive(Debug)]
pub enum Action {
    Proxy(ProxyAction),
    Redirect {
        status: u16,
        location: Template,
    },
    Respond(FixedResponse),
    /// An OpenAI-compatible LLM endpoint: key auth, routing by the body's
    /// `model` to the model's pool, model and credential rewriting.
    Llm(LlmAction),
}

#[derive(Debug, Clone)]
pub struct LlmAction {
    /// Larger bodies are answered with 413.
    pub max_body: usize,
}

/// Forward to a pool, optionally rewriting the path and editing headers.
#[derive(Debug)]
pub struct ProxyAction {
    pub pool: String,
    pub rewrite_prefix: Option<(String, String)>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct FixedResponse {
    pub status: u16,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

/// A redirect location with `{scheme}`, `{host}` (without port), `{path}`, `{query}` (with its
/// leading `?`, or empty) and `{uri}` (path and query) placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub(crate) parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplatePart {
    Literal(String),
    Scheme,
    Host,
    Path,
    Query,
    Uri,
}

/// Why a host pattern or a redirect template is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteSyntaxError {
    #[error("empty host pattern")]
    EmptyHost,
    #[error("host pattern {0:?}: only a leading '*.' wildcard is supported")]
    HostWildcard(String),
    #[error("unclosed '{{' in {0:?}")]
    UnclosedPlaceholder(String),
    #[error("unknown placeholder {{{0}}}; use scheme, host, path, query or uri")]
    UnknownPlaceholder(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, RouteSyntaxError> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err(RouteSyntaxError::EmptyHost);
        }
        match lower.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                Ok(HostPattern::Suffix(format!(".{rest}")))
            }
            _ if lower.contains('*') => Err(RouteSyntaxError::HostWildcard(text.to_string())),
            _ => Ok(HostPattern::Exact(lower)),
        }
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, RouteSyntaxError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| RouteSyntaxError::UnclosedPlaceholder(text.to_string()))?;
            let part = match &rest[open + 1..open + close] {
                "scheme" => TemplatePart::Scheme,
                "host" => TemplatePart::Host,
                "path" => TemplatePart::Path,
                "query" => TemplatePart::Query,
                "uri" => TemplatePart::Uri,
                other => return Err(RouteSyntaxError::UnknownPlaceholder(other.to_string())),
            };
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }
}
