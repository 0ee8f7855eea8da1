//! What the filters know about callers and models: tenants, their API keys
//! and the models they may use. The store loads these; the filters decide
//! with them. They are serialisable so the Redis hot cache can hold them.

use serde::{Deserialize, Serialize};

/// Whether a tenant may send traffic at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Over which period a term budget is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Lifetime,
    /// Calendar months in the tenant's timezone.
    Monthly,
}

/// A recurring weekly access window in the tenant's timezone, e.g. Monday to
/// Friday 08:00–18:00. `end` before `start` spans midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklyWindow {
    /// Lower-case English day names or their three-letter forms.
    pub days: Vec<String>,
    /// `HH:MM`, 24-hour.
    pub start: String,
    pub end: String,
}

/// A tenant as the request path needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub group: String,
    pub group_weight: u32,
    pub weight: u32,
    /// 0 means unlimited.
    pub tokens_per_minute: u64,
    pub max_in_flight: Option<u32>,
    pub status: TenantStatus,
    /// IANA name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Unix milliseconds.
    pub active_from: Option<i64>,
    pub active_until: Option<i64>,
    pub weekly_windows: Vec<WeeklyWindow>,
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
    pub budget_period: BudgetPeriod,
    /// Client-facing model names; empty allows every model.
    pub allowed_models: Vec<String>,
    /// MCP servers (`server`) or single tools of them (`server/tool`) the
    /// tenant may use; empty allows none. Absent in principals cached
    /// before MCP existed.
    #[serde(default)]
    pub allowed_mcp_servers: Vec<String>,
}

/// An API key, without its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The first characters of the secret, for people to recognise it.
    pub prefix: String,
    pub disabled: bool,
    pub weight: u32,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Concurrent requests of this key per model pool, below its tenant's.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
}

/// Who is calling: a key and its tenant, resolved together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub key: ApiKey,
    pub tenant: Tenant,
}

/// A model clients may ask for, and where it is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    /// A pool of the configuration that serves it.
    pub pool: Option<String>,
    /// Or an OpenAI-compatible base URL such as `https://api.example.com/v1`.
    pub base_url: Option<String>,
    pub upstream_model: String,
    /// In clear, in memory only; never serialised.
    #[serde(skip)]
    pub upstream_key: Option<String>,
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    pub max_in_flight: u32,
    pub admission_weight: u32,
    pub context_window: Option<u32>,
    pub enabled: bool,
}

impl Tenant {
    /// The tenant's timezone (UTC when the name is unknown): windows and
    /// monthly budget periods follow it.
    pub fn zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// Whether `model` (its client-facing name) is on the allowlist.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    /// Whether the tenant may reach the MCP server at all.
    pub fn allows_mcp_server(&self, server: &str) -> bool {
        self.allowed_mcp_servers
            .iter()
            .any(|g| g.split_once('/').map_or(g.as_str(), |(s, _)| s) == server)
    }

    /// Whether the tenant may use `tool` of `server`: the whole server is
    /// granted, or that one tool.
    pub fn allows_mcp_tool(&self, server: &str, tool: &str) -> bool {
        self.allowed_mcp_servers
            .iter()
            .any(|g| match g.split_once('/') {
                None => g == server,
                Some((s, t)) => s == server && t == tool,
            })
    }
}
