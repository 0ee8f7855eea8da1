//! The LLM filters of obleth. Each module is one concern of the LLM request
//! path and is testable without a listener; the server wires them into
//! Pingora's phases.

pub mod access;
pub mod admission;
pub mod auth;
pub mod budget;
pub mod openai;
pub mod records;
pub mod telemetry;
pub mod usage;
