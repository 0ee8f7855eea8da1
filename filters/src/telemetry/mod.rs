//! Usage telemetry that is never lost: every request that reached the LLM
//! filters leaves one [`UsageRecord`], appended to a write-ahead log on
//! local disk ([`Wal`]) and shipped from there to ClickHouse ([`Shipper`],
//! [`ClickHouseSink`]). The data plane only hands a record to a bounded
//! queue; the disk and ClickHouse are dealt with behind it.
//!
//! A request bound for the upstream first logs an [`Outcome::Intent`]; its
//! response is released once that is durable, and the completion record
//! supersedes it. An intent whose process died before its completion was
//! logged is shipped as an [`Outcome::Crashed`] row after the restart, so a
//! request the client saw complete has exactly one row whenever the process
//! dies.

mod clickhouse;
mod shipper;
mod wal;

use serde::{Deserialize, Serialize};

pub use self::clickhouse::{ClickHouseConfig, ClickHouseSink, RequestRow, UsageTotals};
pub use shipper::{ShipperConfig, SinkError, UsageSink};
#[doc(hidden)]
pub use wal::decode_frames;
pub use wal::{Dropped, Durability, Durable, Position, Wal, WalConfig, WalStats};

/// What a record in the log stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request ended and this is what it used (superseding its intent).
    #[default]
    Completed,
    /// Appended when the request is admitted, before it reaches the
    /// upstream, with the reserved tokens: never shipped itself, it becomes
    /// a `Crashed` row if the process dies before the completion is logged.
    Intent,
    /// The process died between admission and completion; the tokens are
    /// the reservation, so billing errs towards it, never towards nothing.
    Crashed,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Intent => "intent",
            Outcome::Crashed => "crashed",
        }
    }
}

/// What one LLM request used, as billing and capacity planning need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request id (`X-Request-Id`; a client may choose it, so it need
    /// not be unique).
    pub request_id: String,
    /// Unique to this record: what duplicate detection keys on.
    pub record_id: String,
    /// When the request arrived, Unix milliseconds.
    pub time_ms: u64,
    pub tenant: String,
    pub key: String,
    pub model: String,
    pub route: String,
    /// `fast`, `queued`, `brownout` or `rejected`.
    pub admission: String,
    pub queue_wait_ms: u32,
    /// Time to the upstream's response head; 0 when there was none.
    pub ttfb_ms: u32,
    pub total_ms: u32,
    /// As answered to the client; 499 when the client went away.
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The tokens are obleth's estimate: the upstream reported no usage.
    pub estimated: bool,
    pub cost_usd: f64,
    /// The upstream server that answered, empty when none did.
    pub upstream: String,
    /// The obleth process that served the request.
    pub replica: String,
    /// Absent in records written before intents existed: completed.
    #[serde(default)]
    pub outcome: Outcome,
    /// Set on the records of MCP calls (`model` is then `mcp:{server}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpUsage>,
}

/// What an MCP call was: the server, the JSON-RPC method and, for
/// `tools/call`, the tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpUsage {
    pub server: String,
    pub method: String,
    #[serde(default)]
    pub tool: String,
}
