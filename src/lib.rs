//! obleth: a Pingora reverse proxy that replaces HAProxy at the edge and, on
//! its LLM routes, is a multi-tenant LLM gateway. `main.rs` is the CLI; this
//! library holds the parts, one module per concern, in request-path order.

pub mod admin;
pub mod cli;
pub mod config;
pub mod edge;
pub mod llm;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod store;
pub mod supervision;
