//! Usage telemetry that is never lost: every request that reached the LLM
//! filters leaves one [`UsageRecord`], appended to a write-ahead log on
//! local disk ([`Wal`]) and shipped from there to ClickHouse ([`Shipper`],
//! [`ClickHouseSink`]). The data plane only hands a record to a bounded
//! queue; the disk and ClickHouse are dealt with behind it.

mod clickhouse;
mod shipper;
mod wal;

use serde::{Deserialize, Serialize};

pub use self::clickhouse::{ClickHouseConfig, ClickHouseSink, RequestRow, UsageTotals};
pub use shipper::{ShipperConfig, SinkError, UsageSink};
pub use wal::{Dropped, Position, Wal, WalConfig, WalStats};

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
}
