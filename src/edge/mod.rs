//! The edge plane: what HAProxy does. Nothing here knows of tenants, keys or
//! tokens; the proxy phases call into it for every request.
//!
//! - [`proxy_protocol`]: the PROXY protocol header a trusted L4 relay
//!   sends first, read before TLS and HTTP; it sets the client address.
//! - [`listening`]: the listeners' ports, claimed at start-up so a port in
//!   use stops it, and readiness only once this process listens on them.
//! - [`certificates`]: a TLS listener's certificates, chosen by SNI and
//!   reloadable while it serves.
//! - [`client_connection`]: the client connection under Pingora's parser —
//!   head deadline and size, obleth's own answers to unparsable requests.
//! - [`routing`]: matching a request against the ordered routes, source
//!   ACLs.
//! - [`rate_limit`]: per-client request rate limits of a route.
//! - [`pool`]: server pools and load balancing, passive ejection, the
//!   runtime server state (`ready`, `drain`, `maint`, weight).
//! - [`health`]: active health checks.
//! - [`forwarding`]: `X-Forwarded-*` and the request id.
//! - [`access_log`]: one line per request, HAProxy `httplog` or JSON.

pub mod access_log;
pub mod certificates;
pub mod client_connection;
pub mod forwarding;
pub mod health;
pub mod listening;
pub mod pool;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod routing;
