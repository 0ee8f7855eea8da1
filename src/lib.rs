//! obleth: a Pingora reverse proxy that replaces HAProxy at the edge and, on
//! its LLM routes, is a multi-tenant LLM gateway. `main.rs` is the CLI; this
//! library holds the parts. Dependencies point one way:
//! `config ← edge ← proxy → llm → obleth-filters`, with `server` wiring it
//! all and `admin → store` beside it.
//!
//! Configuration
//! - [`config`]: YAML and `OBLETH_*` overrides → a validated [`config::Config`],
//!   errors with file:line:column; route definitions are data here.
//! - [`haproxy_import`]: `obleth import-haproxy`, an `haproxy.cfg` → an obleth
//!   configuration and the list of lines it could not translate exactly.
//!
//! Edge plane (what HAProxy does; no tenants or tokens)
//! - [`edge`]: client connections under Pingora's parser, routing, pools and
//!   load balancing, health checks, forwarding headers, the access log.
//!
//! The request path
//! - [`proxy`]: the `ProxyHttp` phases top to bottom, the request context,
//!   the one error → status map, the live configuration generation.
//!
//! LLM plane (what an LLM gateway does)
//! - [`llm`]: the store, key resolution, model catalog, MCP servers and
//!   their sessions, budget scopes,
//!   invalidation across replicas, the usage log and its shipping, the
//!   ledger restore. The filters themselves are the `obleth-filters` crate.
//!
//! Operating it
//! - [`admin`]: `/healthz`, `/readyz` and the admin API (the pools' server
//!   state always, the LLM plane's resources with it); [`store`]: tenants,
//!   keys, models, MCP servers and the audit log in Postgres or SQLite.
//! - [`metrics`]: the Prometheus families; [`otel`]: request traces exported
//!   over OTLP/HTTP; [`supervision`]: background tasks that must not die
//!   unnoticed, and readiness.
//! - [`server`]: the Pingora server, its services, signals and reload;
//!   [`upgrade`]: taking over a running obleth's sockets (`run --upgrade`);
//!   [`cli`]: the admin API client behind `obleth tenant` and `obleth key`.

pub mod admin;
pub mod cli;
pub mod config;
pub mod edge;
pub mod haproxy_import;
pub mod llm;
pub mod metrics;
pub mod otel;
pub mod proxy;
pub mod server;
pub mod store;
pub mod supervision;
pub mod upgrade;
