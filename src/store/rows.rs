//! The entities of the store as the admin API reads and writes them, their
//! validation, and their mapping from rows.

use jiff::Timestamp;
use obleth_filters::access::{known_timezone, validate_window};
use obleth_filters::records::{ApiKey, BudgetPeriod, Model, Tenant, TenantStatus, WeeklyWindow};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::secrets::UpstreamKeyCipher;
use super::{get, get_bool, StoreError};

pub(super) const TENANT_SELECT: &str = "SELECT t.id, t.name, t.group_name, g.weight AS group_weight, t.weight,
    t.tokens_per_minute, t.max_in_flight, t.status, t.timezone, t.active_from, t.active_until, t.weekly_windows,
    t.budget_tokens, t.budget_usd, t.budget_period, t.allowed_models, t.created_at, t.updated_at
    FROM tenants t JOIN fairshare_groups g ON g.name = t.group_name";

pub(super) const KEY_SELECT: &str =
    "SELECT id, tenant_id, name, prefix, hash, disabled, weight, expires_at, max_in_flight,
    tokens_per_minute, budget_tokens, budget_usd FROM api_keys";

pub(super) const MODEL_SELECT: &str = "SELECT name, aliases, pool, base_url, upstream_model, upstream_key,
    input_cost_per_token, output_cost_per_token, max_in_flight, admission_weight, context_window, enabled FROM models";

fn default_weight() -> u32 {
    100
}

fn default_group() -> String {
    "default".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A fair-share group: tenants in it split the group's share by weight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    /// At least 1; default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl Group {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            name: get(r, "name")?,
            weight: get::<i64>(r, "weight")? as u32,
        })
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(StoreError::invalid("name", "must be 1 to 100 characters"));
        }
        if self.weight == 0 {
            return Err(StoreError::invalid("weight", "must be at least 1"));
        }
        Ok(())
    }
}

/// Everything an operator sets on a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    /// Fair-share group; default `default`.
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Token rate limit; 0 = unlimited.
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// Concurrent requests per model pool.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default = "active")]
    #[schema(value_type = String, example = "active")]
    pub status: TenantStatus,
    /// IANA timezone for windows and monthly budgets.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_from: Option<i64>,
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_until: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub weekly_windows: Vec<WeeklyWindow>,
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default = "lifetime")]
    #[schema(value_type = String, example = "lifetime")]
    pub budget_period: BudgetPeriod,
    /// Client-facing model names; empty allows all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
}

fn active() -> TenantStatus {
    TenantStatus::Active
}

fn lifetime() -> BudgetPeriod {
    BudgetPeriod::Lifetime
}

/// Timestamps travel as RFC 3339 text and are stored as Unix milliseconds.
pub mod opt_time {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v.and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
            Some(t) => s.serialize_some(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            t.parse::<Timestamp>()
                .map(|ts| ts.as_millisecond())
                .map_err(|e| {
                    serde::de::Error::custom(format!("{t:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()
    }
}

impl TenantSpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(StoreError::invalid("name", "must be 1 to 100 characters"));
        }
        if self.weight == 0 {
            return Err(StoreError::invalid("weight", "must be at least 1"));
        }
        if self.max_in_flight == Some(0) {
            return Err(StoreError::invalid("max_in_flight", "must be at least 1"));
        }
        if !known_timezone(&self.timezone) {
            return Err(StoreError::invalid(
                "timezone",
                format!("{:?} is not an IANA timezone", self.timezone),
            ));
        }
        if let (Some(from), Some(until)) = (self.active_from, self.active_until) {
            if from >= until {
                return Err(StoreError::invalid(
                    "active_until",
                    "must be after active_from",
                ));
            }
        }
        for (i, w) in self.weekly_windows.iter().enumerate() {
            validate_window(w)
                .map_err(|m| StoreError::invalid(&format!("weekly_windows[{i}]"), m))?;
        }
        if self.budget_usd.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(StoreError::invalid(
                "budget_usd",
                "must be a non-negative number",
            ));
        }
        Ok(())
    }
}

/// A stored tenant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantRecord {
    pub id: String,
    #[serde(flatten)]
    pub spec: TenantSpec,
    pub group_weight: u32,
    #[serde(with = "opt_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Option<i64>,
    #[serde(with = "opt_time")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Option<i64>,
}

fn json_list<T: for<'de> Deserialize<'de>>(field: &str, text: &str) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::invalid(field, format!("stored value unreadable: {e}")))
}

impl TenantRecord {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        let status: String = get(r, "status")?;
        let period: String = get(r, "budget_period")?;
        Ok(Self {
            id: get(r, "id")?,
            spec: TenantSpec {
                name: get(r, "name")?,
                group: get(r, "group_name")?,
                weight: get::<i64>(r, "weight")? as u32,
                tokens_per_minute: get::<i64>(r, "tokens_per_minute")? as u64,
                max_in_flight: get::<Option<i64>>(r, "max_in_flight")?.map(|v| v as u32),
                status: match status.as_str() {
                    "suspended" => TenantStatus::Suspended,
                    _ => TenantStatus::Active,
                },
                timezone: get(r, "timezone")?,
                active_from: get(r, "active_from")?,
                active_until: get(r, "active_until")?,
                weekly_windows: json_list("weekly_windows", &get::<String>(r, "weekly_windows")?)?,
                budget_tokens: get::<Option<i64>>(r, "budget_tokens")?.map(|v| v as u64),
                budget_usd: get(r, "budget_usd")?,
                budget_period: match period.as_str() {
                    "monthly" => BudgetPeriod::Monthly,
                    _ => BudgetPeriod::Lifetime,
                },
                allowed_models: json_list("allowed_models", &get::<String>(r, "allowed_models")?)?,
            },
            group_weight: get::<i64>(r, "group_weight")? as u32,
            created_at: Some(get(r, "created_at")?),
            updated_at: Some(get(r, "updated_at")?),
        })
    }
}

impl From<TenantRecord> for Tenant {
    fn from(r: TenantRecord) -> Tenant {
        let s = r.spec;
        Tenant {
            id: r.id,
            name: s.name,
            group: s.group,
            group_weight: r.group_weight,
            weight: s.weight,
            tokens_per_minute: s.tokens_per_minute,
            max_in_flight: s.max_in_flight,
            status: s.status,
            timezone: s.timezone,
            active_from: s.active_from,
            active_until: s.active_until,
            weekly_windows: s.weekly_windows,
            budget_tokens: s.budget_tokens,
            budget_usd: s.budget_usd,
            budget_period: s.budget_period,
            allowed_models: s.allowed_models,
        }
    }
}

pub trait AsStr {
    fn as_str(&self) -> &'static str;
}

impl AsStr for TenantStatus {
    fn as_str(&self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

impl AsStr for BudgetPeriod {
    fn as_str(&self) -> &'static str {
        match self {
            BudgetPeriod::Lifetime => "lifetime",
            BudgetPeriod::Monthly => "monthly",
        }
    }
}

/// Everything an operator sets on an API key (the secret is generated).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    /// Share within the tenant; default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Concurrent requests per model pool; none: only the tenant's cap.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
}

impl KeySpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(StoreError::invalid("name", "must be 1 to 100 characters"));
        }
        if self.weight == 0 {
            return Err(StoreError::invalid("weight", "must be at least 1"));
        }
        if self.max_in_flight == Some(0) {
            return Err(StoreError::invalid("max_in_flight", "must be at least 1"));
        }
        if self.budget_usd.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(StoreError::invalid(
                "budget_usd",
                "must be a non-negative number",
            ));
        }
        Ok(())
    }

    pub fn of(key: &ApiKey) -> Self {
        Self {
            name: key.name.clone(),
            disabled: key.disabled,
            weight: key.weight,
            expires_at: key.expires_at,
            max_in_flight: key.max_in_flight,
            tokens_per_minute: key.tokens_per_minute,
            budget_tokens: key.budget_tokens,
            budget_usd: key.budget_usd,
        }
    }
}

pub(super) fn key_from_row(r: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: get(r, "id")?,
        tenant_id: get(r, "tenant_id")?,
        name: get(r, "name")?,
        prefix: get(r, "prefix")?,
        disabled: get_bool(r, "disabled")?,
        weight: get::<i64>(r, "weight")? as u32,
        expires_at: get(r, "expires_at")?,
        max_in_flight: get::<Option<i64>>(r, "max_in_flight")?.map(|v| v as u32),
        tokens_per_minute: get::<Option<i64>>(r, "tokens_per_minute")?.map(|v| v as u64),
        budget_tokens: get::<Option<i64>>(r, "budget_tokens")?.map(|v| v as u64),
        budget_usd: get(r, "budget_usd")?,
    })
}

/// Everything an operator sets on a model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Client-facing name.
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A pool of the configuration that serves the model …
    #[serde(default)]
    pub pool: Option<String>,
    /// … or an OpenAI-compatible base URL (`https://host/v1`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name sent upstream; default: `name`.
    #[serde(default)]
    pub upstream_model: String,
    /// Write-only; `""` clears it, absent keeps the stored one on update.
    #[serde(default, skip_serializing)]
    pub upstream_key: Option<String>,
    #[serde(default)]
    pub input_cost_per_token: f64,
    #[serde(default)]
    pub output_cost_per_token: f64,
    #[serde(default = "default_model_in_flight")]
    pub max_in_flight: u32,
    #[serde(default = "one")]
    pub admission_weight: u32,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_model_in_flight() -> u32 {
    16
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl ModelSpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(StoreError::invalid("name", "must be 1 to 200 characters"));
        }
        if self.upstream_model.is_empty() {
            return Err(StoreError::invalid("upstream_model", "must not be empty"));
        }
        match (&self.pool, &self.base_url) {
            (None, None) => return Err(StoreError::invalid("pool", "give a pool or a base_url")),
            (Some(_), Some(_)) => {
                return Err(StoreError::invalid(
                    "base_url",
                    "give a pool or a base_url, not both",
                ))
            }
            (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(StoreError::invalid(
                    "base_url",
                    "must start with http:// or https://",
                ))
            }
            _ => {}
        }
        for (field, v) in [
            ("input_cost_per_token", self.input_cost_per_token),
            ("output_cost_per_token", self.output_cost_per_token),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(StoreError::invalid(field, "must be a non-negative number"));
            }
        }
        if self.max_in_flight == 0 {
            return Err(StoreError::invalid("max_in_flight", "must be at least 1"));
        }
        if self.admission_weight == 0 {
            return Err(StoreError::invalid(
                "admission_weight",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// What the audit log may hold: never the upstream key.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "upstream_key_set".into(),
                serde_json::Value::Bool(
                    self.upstream_key.as_deref().is_some_and(|k| !k.is_empty()),
                ),
            );
        }
        v
    }

    pub fn of(model: &Model) -> Self {
        Self {
            name: model.name.clone(),
            aliases: model.aliases.clone(),
            pool: model.pool.clone(),
            base_url: model.base_url.clone(),
            upstream_model: model.upstream_model.clone(),
            upstream_key: None,
            input_cost_per_token: model.input_cost_per_token,
            output_cost_per_token: model.output_cost_per_token,
            max_in_flight: model.max_in_flight,
            admission_weight: model.admission_weight,
            context_window: model.context_window,
            enabled: model.enabled,
        }
    }
}

pub(super) fn model_from_row(r: &AnyRow, cipher: &UpstreamKeyCipher) -> Result<Model, StoreError> {
    let sealed: Option<String> = get(r, "upstream_key")?;
    Ok(Model {
        name: get(r, "name")?,
        aliases: json_list("aliases", &get::<String>(r, "aliases")?)?,
        pool: get(r, "pool")?,
        base_url: get(r, "base_url")?,
        upstream_model: get(r, "upstream_model")?,
        upstream_key: sealed
            .map(|s| cipher.open(&s))
            .transpose()
            .map_err(StoreError::Crypto)?,
        input_cost_per_token: get(r, "input_cost_per_token")?,
        output_cost_per_token: get(r, "output_cost_per_token")?,
        max_in_flight: get::<i64>(r, "max_in_flight")? as u32,
        admission_weight: get::<i64>(r, "admission_weight")? as u32,
        context_window: get::<Option<i64>>(r, "context_window")?.map(|v| v as u32),
        enabled: get_bool(r, "enabled")?,
    })
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "opt_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Option<i64>,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl AuditEntry {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        let detail: String = get(r, "detail")?;
        Ok(Self {
            id: get(r, "id")?,
            at: Some(get(r, "at")?),
            actor: get(r, "actor")?,
            action: get(r, "action")?,
            entity_type: get(r, "entity_type")?,
            entity_id: get(r, "entity_id")?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    }
}
