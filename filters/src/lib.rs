//! The LLM filters of obleth. Each module is one concern of the LLM request
//! path and is testable without a listener; the server wires them into
//! Pingora's phases.
//!
//! - [`auth`]: API keys to principals through the in-process cache, Redis
//!   and the store; [`access`]: tenant status, windows and model allowlists.
//! - [`openai`]: the OpenAI endpoints and request bodies; [`usage`]: token
//!   usage from JSON and SSE responses.
//! - [`budget`]: token-rate and term budgets, atomic in Redis (Lua) or
//!   in-process; [`redis_link`]: the shared Redis connection and its breaker.
//! - [`admission`]: weighted fair queuing per model pool under a global
//!   in-flight limit, with brownout.
//! - [`records`]: tenants, keys and principals as the filters see them.
//! - [`telemetry`]: the usage write-ahead log, its shipper and ClickHouse.

pub mod access;
pub mod admission;
pub mod auth;
pub mod budget;
pub mod openai;
pub mod records;
pub mod redis_link;
pub mod telemetry;
pub mod usage;
