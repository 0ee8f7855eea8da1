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

/// Longest group, tenant or key name, in characters.
pub const NAME_MAX: usize = 100;
/// Longest model name or alias.
pub const MODEL_NAME_MAX: usize = 200;
/// Largest fair-share or admission weight: weights are ratios, and a cap
/// keeps their products far from overflow.
pub const WEIGHT_MAX: u32 = 1_000_000;
/// Largest concurrency cap of any kind.
pub const IN_FLIGHT_MAX: u32 = 1_000_000;
/// Largest token count (rates, budgets): 2^53 - 1, exact in every JSON
/// parser and far below the `BIGINT` columns' limit.
pub const COUNT_MAX: u64 = 9_007_199_254_740_991;
/// Largest context window a model may declare.
pub const CONTEXT_WINDOW_MAX: u32 = i32::MAX as u32;
/// Most aliases one model may have.
pub const ALIASES_MAX: usize = 64;
/// Most entries of a tenant's `allowed_models`.
pub const ALLOWED_MODELS_MAX: usize = 1000;
/// Most weekly windows of one tenant.
pub const WINDOWS_MAX: usize = 64;
/// Longest `upstream_model`.
pub const UPSTREAM_MODEL_MAX: usize = 1000;
/// Longest upstream key.
pub const UPSTREAM_KEY_MAX: usize = 4096;
/// Longest `base_url`.
pub const BASE_URL_MAX: usize = 2000;
/// What every tenant id starts with (see [`super::new_id`]); tenant names
/// may not, so "id or name" always means one tenant.
pub const TENANT_ID_PREFIX: &str = "ten_";

/// Group and key names: a letter or digit, then letters, digits, `.`, `_`
/// or `-` (ASCII, so no two names look alike and every name is a path
/// segment as it is).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";
/// Tenant names: as [`NAME_PATTERN`], and never shaped like a tenant id.
pub const TENANT_NAME_PATTERN: &str = "^(?!ten_)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";
/// Model names and aliases: as [`NAME_PATTERN`], plus `:`, `/`, `@` and
/// `+` (`org/model`, `ft:base:org:id`, `model@rev`).
pub const MODEL_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$";
/// A weekly window's `HH:MM` bound (`24:00` ends a day).
pub const TIME_PATTERN: &str = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$";
/// A `base_url`: `http(s)://host[:port][/path]`, the host a DNS name or
/// address.
pub const BASE_URL_PATTERN: &str = "^https?://(?:[A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$";
/// An upstream key: visible ASCII, as it travels in a header.
pub const UPSTREAM_KEY_PATTERN: &str = "^[!-~]*$";
/// The day names a weekly window accepts.
pub const DAYS: [&str; 14] = [
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Checks `value` against a name rule: 1 to `max` ASCII characters, a
/// letter or digit first, then letters, digits and `extra`.
fn check_name(field: &str, value: &str, max: usize, extra: &str) -> Result<(), StoreError> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if !first_ok || !rest_ok || value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!(
                "must be 1 to {max} characters: a letter or digit, then letters, digits or any of {extra:?}"
            ),
        ));
    }
    Ok(())
}

/// A group or key name.
pub fn check_plain_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_name(field, value, NAME_MAX, "._-")
}

/// A tenant name: a plain name that cannot be mistaken for a tenant id.
pub fn check_tenant_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_plain_name(field, value)?;
    if value.starts_with(TENANT_ID_PREFIX) {
        return Err(StoreError::invalid(
            field,
            format!("must not start with {TENANT_ID_PREFIX:?}, which tenant ids start with"),
        ));
    }
    Ok(())
}

/// A model name or alias.
pub fn check_model_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_name(field, value, MODEL_NAME_MAX, "._:/@+-")
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), StoreError> {
    if value < min || value > max {
        return Err(StoreError::invalid(
            field,
            format!("must be {min} to {max}"),
        ));
    }
    Ok(())
}

fn check_money(field: &str, value: f64) -> Result<(), StoreError> {
    if !value.is_finite() || value < 0.0 {
        return Err(StoreError::invalid(field, "must be a non-negative number"));
    }
    Ok(())
}

fn is_time(text: &str) -> bool {
    let b = text.as_bytes();
    if text == "24:00" {
        return true;
    }
    b.len() == 5
        && b[2] == b':'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit())
        && (b[0] < b'2' || (b[0] == b'2' && b[1] <= b'3'))
        && b[3] <= b'5'
}

/// Every IANA timezone name this machine knows (and `UTC`), sorted: the
/// values `timezone` accepts, exactly as written.
pub fn timezones() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = jiff::tz::db()
            .available()
            .map(|n| n.as_str().to_string())
            .filter(|n| known_timezone(n))
            .collect();
        names.push("UTC".into());
        names.sort();
        names.dedup();
        names
    })
}

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
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    )]
    pub name: String,
    /// Default 100.
    #[serde(default = "default_weight")]
    #[schema(minimum = 1, maximum = 1000000, default = 100)]
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
        check_plain_name("name", &self.name)?;
        check_range("weight", self.weight, 1, WEIGHT_MAX)
    }
}

/// Everything an operator sets on a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Unique; never starts with `ten_` (tenant ids do).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^(?!ten_)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    )]
    pub name: String,
    /// Fair-share group (it must exist); default `default`.
    #[serde(default = "default_group")]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        default = "default"
    )]
    pub group: String,
    /// Share within the group; default 100.
    #[serde(default = "default_weight")]
    #[schema(minimum = 1, maximum = 1000000, default = 100)]
    pub weight: u32,
    /// Token rate limit; 0 = unlimited.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64, format = Int64)]
    pub tokens_per_minute: u64,
    /// Concurrent requests per model pool.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_in_flight: Option<u32>,
    #[serde(default = "active")]
    #[schema(value_type = StatusName, default = "active")]
    pub status: TenantStatus,
    /// IANA timezone for windows and monthly budgets, as this machine's
    /// timezone database spells it.
    #[serde(default = "default_timezone")]
    #[schema(schema_with = timezone_schema)]
    pub timezone: String,
    /// The tenant is refused before this time.
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_from: Option<i64>,
    /// The tenant is refused from this time on; after `active_from`.
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_until: Option<i64>,
    /// When set, the tenant is served only inside one of these windows.
    #[serde(default)]
    #[schema(value_type = Vec<WindowSchema>, max_items = 64)]
    pub weekly_windows: Vec<WeeklyWindow>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64, format = Int64)]
    pub budget_tokens: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub budget_usd: Option<f64>,
    #[serde(default = "lifetime")]
    #[schema(value_type = PeriodName, default = "lifetime")]
    pub budget_period: BudgetPeriod,
    /// Canonical model names; empty allows all. Allowing a model allows
    /// its aliases; an alias listed here grants nothing.
    #[serde(default)]
    #[schema(value_type = Vec<ModelNameSchema>, max_items = 1000)]
    pub allowed_models: Vec<String>,
}

/// `active` or `suspended` (a suspended tenant's keys get 403).
#[derive(Serialize, ToSchema)]
#[schema(as = TenantStatus)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum StatusName {
    Active,
    Suspended,
}

/// `lifetime` or `monthly` (months in the tenant's timezone).
#[derive(Serialize, ToSchema)]
#[schema(as = BudgetPeriod)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum PeriodName {
    Lifetime,
    Monthly,
}

/// A model name or alias.
#[derive(ToSchema)]
#[schema(as = ModelName, value_type = String, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
#[allow(dead_code)]
pub struct ModelNameSchema(String);

/// Days of the week with a daily time range, in the tenant's timezone;
/// `end` before `start` spans midnight.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WeeklyWindow)]
#[allow(dead_code)]
pub struct WindowSchema {
    #[schema(min_items = 1)]
    days: Vec<DayName>,
    /// `HH:MM`, 24-hour.
    #[schema(pattern = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")]
    start: String,
    /// `HH:MM`, 24-hour; `24:00` is the end of the day.
    #[schema(pattern = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")]
    end: String,
}

/// A day, by its lower-case English name or its first three letters.
#[derive(Serialize, ToSchema)]
#[schema(as = Day)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum DayName {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

/// The `timezone` property: one of [`timezones`].
fn timezone_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(timezones().iter().map(String::as_str)))
        .default(Some(serde_json::Value::String("UTC".into())))
        .build()
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
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// An RFC 3339 date-time (`2026-01-31T09:00:00Z`, offsets `±HH:MM`,
    /// optional fractions) as Unix milliseconds; nothing looser.
    pub fn parse(text: &str) -> Result<i64, String> {
        static RFC3339: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
        let strict = RFC3339.get_or_init(|| {
            regex::Regex::new(
                r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$",
            )
            .ok()
        });
        let refuse = |why: String| format!("{text:?} is not an RFC 3339 date-time{why}");
        if !strict.as_ref().is_some_and(|r| r.is_match(text)) {
            return Err(refuse(String::new()));
        }
        text.parse::<Timestamp>()
            .map(|ts| ts.as_millisecond())
            .map_err(|e| refuse(format!(": {e}")))
    }
}

impl TenantSpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_tenant_name("name", &self.name)?;
        check_plain_name("group", &self.group)?;
        check_range("weight", self.weight, 1, WEIGHT_MAX)?;
        check_range("tokens_per_minute", self.tokens_per_minute, 0, COUNT_MAX)?;
        if let Some(v) = self.max_in_flight {
            check_range("max_in_flight", v, 1, IN_FLIGHT_MAX)?;
        }
        if timezones().binary_search(&self.timezone).is_err() {
            return Err(StoreError::invalid(
                "timezone",
                format!(
                    "{:?} is not an IANA timezone this machine knows",
                    self.timezone
                ),
            ));
        }
        self.check_active_window()?;
        if self.weekly_windows.len() > WINDOWS_MAX {
            return Err(StoreError::invalid(
                "weekly_windows",
                format!("at most {WINDOWS_MAX} windows"),
            ));
        }
        for (i, w) in self.weekly_windows.iter().enumerate() {
            let field = format!("weekly_windows[{i}]");
            validate_window(w).map_err(|m| StoreError::invalid(&field, m))?;
            if let Some(d) = w.days.iter().find(|d| !DAYS.contains(&d.as_str())) {
                return Err(StoreError::invalid(
                    &field,
                    format!("{d:?} is not a lower-case day name (mon or monday, …)"),
                ));
            }
            if let Some(t) = [&w.start, &w.end].into_iter().find(|t| !is_time(t)) {
                return Err(StoreError::invalid(
                    &field,
                    format!("{t:?} is not a HH:MM time"),
                ));
            }
        }
        if let Some(v) = self.budget_tokens {
            check_range("budget_tokens", v, 0, COUNT_MAX)?;
        }
        if let Some(v) = self.budget_usd {
            check_money("budget_usd", v)?;
        }
        if self.allowed_models.len() > ALLOWED_MODELS_MAX {
            return Err(StoreError::invalid(
                "allowed_models",
                format!("at most {ALLOWED_MODELS_MAX} models"),
            ));
        }
        for (i, m) in self.allowed_models.iter().enumerate() {
            check_model_name(&format!("allowed_models[{i}]"), m)?;
        }
        Ok(())
    }

    /// `active_until` must come after `active_from`: the one rule between
    /// two fields, so the admin API can tell a patch that breaks it through
    /// the stored value (409) from a body that breaks it alone (400).
    pub fn check_active_window(&self) -> Result<(), StoreError> {
        if let (Some(from), Some(until)) = (self.active_from, self.active_until) {
            if from >= until {
                return Err(StoreError::invalid(
                    "active_until",
                    "must be after active_from",
                ));
            }
        }
        Ok(())
    }
}

/// A stored tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantRecord {
    pub id: String,
    #[serde(flatten)]
    pub spec: TenantSpec,
    pub group_weight: u32,
    #[serde(with = "opt_time")]
    pub created_at: Option<i64>,
    #[serde(with = "opt_time")]
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
    /// Unique within the tenant.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    )]
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    /// Share within the tenant; default 100.
    #[serde(default = "default_weight")]
    #[schema(minimum = 1, maximum = 1000000, default = 100)]
    pub weight: u32,
    #[serde(default, with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Concurrent requests per model pool; none: only the tenant's cap.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64, format = Int64)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64, format = Int64)]
    pub budget_tokens: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub budget_usd: Option<f64>,
}

impl KeySpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_plain_name("name", &self.name)?;
        check_range("weight", self.weight, 1, WEIGHT_MAX)?;
        if let Some(v) = self.max_in_flight {
            check_range("max_in_flight", v, 1, IN_FLIGHT_MAX)?;
        }
        if let Some(v) = self.tokens_per_minute {
            check_range("tokens_per_minute", v, 0, COUNT_MAX)?;
        }
        if let Some(v) = self.budget_tokens {
            check_range("budget_tokens", v, 0, COUNT_MAX)?;
        }
        if let Some(v) = self.budget_usd {
            check_money("budget_usd", v)?;
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
    /// Client-facing name. Names and aliases of all models are one
    /// namespace: no string names two models.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
    )]
    pub name: String,
    /// Other client-facing names of this model. A set: repeats and the
    /// model's own name are dropped.
    #[serde(default)]
    #[schema(value_type = Vec<ModelNameSchema>, max_items = 64)]
    pub aliases: Vec<String>,
    /// A pool of the live configuration that serves the model …
    #[serde(default)]
    pub pool: Option<String>,
    /// … or an OpenAI-compatible base URL (`https://host/v1`).
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = "^https?://(?:[A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
    )]
    pub base_url: Option<String>,
    /// Name sent upstream; empty or absent: `name`.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub upstream_model: String,
    /// Write-only; `""` clears it, absent keeps the stored one on update.
    #[serde(default, skip_serializing_if = "always")]
    #[schema(max_length = 4096, pattern = "^[!-~]*$", write_only)]
    pub upstream_key: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub input_cost_per_token: f64,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub output_cost_per_token: f64,
    /// Concurrent requests (the model's admission pool); default 16.
    #[serde(default = "default_model_in_flight")]
    #[schema(minimum = 1, maximum = 1000000, default = 16)]
    pub max_in_flight: u32,
    /// Multiplies tenant weights in the model's pool; default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000000, default = 1)]
    pub admission_weight: u32,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub context_window: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// [`BASE_URL_PATTERN`], compiled once (a constant: the unit tests compile it).
fn base_url_regex() -> Option<&'static regex::Regex> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(BASE_URL_PATTERN).ok())
        .as_ref()
}

/// The upstream key is write-only: never serialized (not to the API, the
/// audit log or `obleth check`), yet documented as a request field, which
/// plain `skip_serializing` would hide from the OpenAPI document.
fn always(_: &Option<String>) -> bool {
    true
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
    /// The spec as stored: `upstream_model` defaults to the name, and the
    /// aliases are a set without the model's own name (first spelling
    /// kept, in order).
    pub fn normalized(&self) -> ModelSpec {
        let mut spec = self.clone();
        if spec.upstream_model.is_empty() {
            spec.upstream_model = spec.name.clone();
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(spec.name.clone());
        spec.aliases.retain(|a| seen.insert(a.clone()));
        spec
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        check_model_name("name", &self.name)?;
        if self.aliases.len() > ALIASES_MAX {
            return Err(StoreError::invalid(
                "aliases",
                format!("at most {ALIASES_MAX} aliases"),
            ));
        }
        for (i, a) in self.aliases.iter().enumerate() {
            check_model_name(&format!("aliases[{i}]"), a)?;
        }
        let upstream_len = self.upstream_model.chars().count();
        if upstream_len == 0 || upstream_len > UPSTREAM_MODEL_MAX {
            return Err(StoreError::invalid(
                "upstream_model",
                format!("must be 1 to {UPSTREAM_MODEL_MAX} characters"),
            ));
        }
        if let Some(key) = &self.upstream_key {
            if key.len() > UPSTREAM_KEY_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(StoreError::invalid(
                    "upstream_key",
                    format!("must be at most {UPSTREAM_KEY_MAX} visible ASCII characters"),
                ));
            }
        }
        match (&self.pool, &self.base_url) {
            (None, None) => return Err(StoreError::invalid("pool", "give a pool or a base_url")),
            (Some(_), Some(_)) => {
                return Err(StoreError::invalid(
                    "base_url",
                    "give a pool or a base_url, not both",
                ))
            }
            (None, Some(url))
                if url.len() > BASE_URL_MAX
                    || !base_url_regex().is_some_and(|r| r.is_match(url)) =>
            {
                return Err(StoreError::invalid(
                    "base_url",
                    "must be http(s)://host[:port][/path]",
                ))
            }
            _ => {}
        }
        check_money("input_cost_per_token", self.input_cost_per_token)?;
        check_money("output_cost_per_token", self.output_cost_per_token)?;
        check_range("max_in_flight", self.max_in_flight, 1, IN_FLIGHT_MAX)?;
        check_range("admission_weight", self.admission_weight, 1, WEIGHT_MAX)?;
        if let Some(v) = self.context_window {
            check_range("context_window", v, 1, CONTEXT_WINDOW_MAX)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    fn schema_of<T: PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).unwrap_or_default()
    }

    #[test]
    fn the_documented_patterns_are_the_ones_the_checks_apply() {
        let tenant = schema_of::<TenantSpec>();
        assert_eq!(tenant["properties"]["name"]["pattern"], TENANT_NAME_PATTERN);
        assert_eq!(tenant["properties"]["group"]["pattern"], NAME_PATTERN);
        let model = schema_of::<ModelSpec>();
        assert_eq!(model["properties"]["name"]["pattern"], MODEL_NAME_PATTERN);
        assert_eq!(model["properties"]["base_url"]["pattern"], BASE_URL_PATTERN);
        assert_eq!(
            model["properties"]["upstream_key"]["pattern"],
            UPSTREAM_KEY_PATTERN
        );
        assert_eq!(
            schema_of::<ModelNameSchema>()["pattern"],
            MODEL_NAME_PATTERN
        );
        assert_eq!(
            schema_of::<KeySpec>()["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            schema_of::<Group>()["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        let window = schema_of::<WindowSchema>();
        assert_eq!(window["properties"]["start"]["pattern"], TIME_PATTERN);
        assert_eq!(tenant["properties"]["weight"]["maximum"], WEIGHT_MAX);
        assert_eq!(tenant["properties"]["budget_tokens"]["maximum"], COUNT_MAX);
        assert_eq!(
            model["properties"]["context_window"]["maximum"],
            CONTEXT_WINDOW_MAX
        );
    }

    #[test]
    fn names_follow_their_patterns() {
        for (name, plain, tenant, model) in [
            ("acme", true, true, true),
            ("a.b_c-9", true, true, true),
            ("org/model:v1@rev+x", false, false, true),
            ("ten_3f9a", true, false, true),
            ("Ten_x", true, true, true),
            ("-lead", false, false, false),
            ("", false, false, false),
            ("two words", false, false, false),
            ("café", false, false, false),
            ("line\n", false, false, false),
        ] {
            assert_eq!(check_plain_name("n", name).is_ok(), plain, "{name:?}");
            assert_eq!(check_tenant_name("n", name).is_ok(), tenant, "{name:?}");
            assert_eq!(check_model_name("n", name).is_ok(), model, "{name:?}");
        }
        assert!(check_plain_name("n", &"a".repeat(NAME_MAX)).is_ok());
        assert!(check_plain_name("n", &"a".repeat(NAME_MAX + 1)).is_err());
        assert!(check_model_name("n", &"a".repeat(MODEL_NAME_MAX + 1)).is_err());
    }

    #[test]
    fn times_urls_and_timezones_are_checked_exactly() {
        for (t, ok) in [
            ("00:00", true),
            ("23:59", true),
            ("24:00", true),
            ("24:01", false),
            ("9:05", false),
            ("+9:05", false),
            ("12:60", false),
            ("12:5", false),
        ] {
            assert_eq!(is_time(t), ok, "{t}");
        }
        let re = base_url_regex().expect("BASE_URL_PATTERN compiles");
        for (u, ok) in [
            ("https://api.example.com/v1", true),
            ("http://127.0.0.1:8000", true),
            ("http://[::1]:9/v1", true),
            ("http://h:65536/", false),
            ("ftp://h/", false),
            ("http://", false),
            ("http://h/ space", false),
        ] {
            assert_eq!(re.is_match(u), ok, "{u}");
        }
        assert!(timezones().binary_search(&"UTC".to_string()).is_ok());
        assert_eq!(
            opt_time::parse("2026-01-31T09:00:00Z"),
            Ok(1_769_850_000_000)
        );
        for loose in [
            "2026-01-31",
            "2026-01-31T09:00Z",
            "2026-01-31T09:00:00",
            "2026-01-31 09:00:00Z",
        ] {
            assert!(opt_time::parse(loose).is_err(), "{loose}");
        }
    }

    #[test]
    fn aliases_are_a_set_without_the_models_own_name() {
        let spec = ModelSpec {
            name: "m".into(),
            aliases: vec!["a".into(), "m".into(), "b".into(), "a".into()],
            pool: Some("p".into()),
            base_url: None,
            upstream_model: String::new(),
            upstream_key: None,
            input_cost_per_token: 0.0,
            output_cost_per_token: 0.0,
            max_in_flight: 1,
            admission_weight: 1,
            context_window: None,
            enabled: true,
        }
        .normalized();
        assert_eq!(spec.aliases, ["a", "b"]);
        assert_eq!(spec.upstream_model, "m");
    }
}
