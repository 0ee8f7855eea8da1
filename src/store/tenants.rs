//! Tenants: who is served, in which group, when, and within which rates
//! and budgets.

use obleth_filters::access::validate_window;
use obleth_filters::records::{BudgetPeriod, Tenant, TenantStatus, WeeklyWindow};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};
use utoipa::ToSchema;

use super::models::ModelNameSchema;
use super::validate::{
    check_mcp_grant, check_model_name, check_money, check_plain_name, check_range,
    check_tenant_name, default_weight, is_time, timezones, ALLOWED_MODELS_MAX, COUNT_MAX, DAYS,
    IN_FLIGHT_MAX, TENANT_ID_PREFIX, TOOLS_MAX, WEIGHT_MAX, WINDOWS_MAX,
};
use super::{classify, get, json_list, new_id, opt_time, unix_ms, AnyQuery, Store, StoreError};

const TENANT_SELECT: &str = "SELECT t.id, t.name, t.group_name, g.weight AS group_weight, t.weight,
    t.tokens_per_minute, t.max_in_flight, t.status, t.timezone, t.active_from, t.active_until, t.weekly_windows,
    t.budget_tokens, t.budget_usd, t.budget_period, t.allowed_models, t.allowed_mcp_servers, t.created_at, t.updated_at
    FROM tenants t JOIN fairshare_groups g ON g.name = t.group_name";

fn default_group() -> String {
    "default".into()
}

fn default_timezone() -> String {
    "UTC".into()
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
    /// MCP servers the tenant's keys may use: a server's name grants every
    /// tool the server allows, `server/tool` that tool only; empty grants
    /// none (tools are opt-in).
    #[serde(default)]
    #[schema(value_type = Vec<McpGrantSchema>, max_items = 1000)]
    pub allowed_mcp_servers: Vec<String>,
}

/// An MCP server's name, or `server/tool` for one of its tools.
#[derive(ToSchema)]
#[schema(as = McpGrant, value_type = String, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9_./-]{1,128})?$")]
#[allow(dead_code)]
pub struct McpGrantSchema(String);

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
        if self.allowed_mcp_servers.len() > TOOLS_MAX {
            return Err(StoreError::invalid(
                "allowed_mcp_servers",
                format!("at most {TOOLS_MAX} entries"),
            ));
        }
        for (i, g) in self.allowed_mcp_servers.iter().enumerate() {
            check_mcp_grant(&format!("allowed_mcp_servers[{i}]"), g)?;
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
                allowed_mcp_servers: json_list(
                    "allowed_mcp_servers",
                    &get::<String>(r, "allowed_mcp_servers")?,
                )?,
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
            allowed_mcp_servers: s.allowed_mcp_servers,
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

impl Store {
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query(&format!("{TENANT_SELECT} ORDER BY t.name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(TenantRecord::from_row).collect()
    }

    /// A tenant by id or by name. Names cannot start with
    /// [`TENANT_ID_PREFIX`], so a string of that shape is only ever looked
    /// up as an id, any other only as a name: one string, one tenant.
    pub async fn tenant(&self, id_or_name: &str) -> Result<TenantRecord, StoreError> {
        let column = if id_or_name.starts_with(TENANT_ID_PREFIX) {
            "t.id"
        } else {
            "t.name"
        };
        let sql = format!("{TENANT_SELECT} WHERE {column} = $1");
        self.find("tenant", &sql, id_or_name, TenantRecord::from_row)
            .await
    }

    pub async fn create_tenant(
        &self,
        actor: &str,
        spec: &TenantSpec,
    ) -> Result<TenantRecord, StoreError> {
        spec.validate()?;
        let id = new_id("ten")?;
        let (mut tx, _writer) = self.begin().await?;
        Self::require_group(&mut tx, &spec.group).await?;
        let now = unix_ms();
        bind_tenant(
            sqlx::query(
                "INSERT INTO tenants (name, group_name, weight, tokens_per_minute, max_in_flight, status, timezone,
                   active_from, active_until, weekly_windows, budget_tokens, budget_usd, budget_period, allowed_models,
                   allowed_mcp_servers, id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)",
            ),
            spec,
        )
        .bind(&id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, &format!("tenant {:?}", spec.name)))?;
        Self::audit(&mut tx, actor, "tenant.create", "tenant", &id, spec).await?;
        tx.commit().await?;
        self.tenant(&id).await
    }

    /// Replaces a tenant's settings (the API merges a patch first).
    pub async fn update_tenant(
        &self,
        actor: &str,
        id: &str,
        spec: &TenantSpec,
    ) -> Result<TenantRecord, StoreError> {
        spec.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        Self::require_group(&mut tx, &spec.group).await?;
        let update = bind_tenant(
            sqlx::query(
                "UPDATE tenants SET name = $1, group_name = $2, weight = $3, tokens_per_minute = $4, max_in_flight = $5,
                   status = $6, timezone = $7, active_from = $8, active_until = $9, weekly_windows = $10,
                   budget_tokens = $11, budget_usd = $12, budget_period = $13, allowed_models = $14, allowed_mcp_servers = $15,
                   updated_at = $16 WHERE id = $17",
            ),
            spec,
        )
        .bind(unix_ms())
        .bind(id);
        let what = format!("tenant {:?}", spec.name);
        Self::write_one(&mut tx, update, &what, "tenant", id).await?;
        Self::audit(&mut tx, actor, "tenant.update", "tenant", id, spec).await?;
        tx.commit().await?;
        self.tenant(id).await
    }

    /// A tenant's group must exist: a conflict with the stored state (409
    /// naming `group`) rather than a malformed request.
    async fn require_group(
        tx: &mut Transaction<'static, Any>,
        group: &str,
    ) -> Result<(), StoreError> {
        let found = sqlx::query("SELECT name FROM fairshare_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&mut **tx)
            .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::conflict_on(
                "group",
                format!("the group {group:?} does not exist"),
            )),
        }
    }

    pub async fn delete_tenant(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        self.delete(actor, "tenants", "id", "tenant", id).await
    }
}

/// Binds a tenant's settings as `$1`–`$15`, in the order the insert and
/// the update list them.
fn bind_tenant<'q>(q: AnyQuery<'q>, s: &'q TenantSpec) -> AnyQuery<'q> {
    q.bind(&s.name)
        .bind(&s.group)
        .bind(i64::from(s.weight))
        .bind(s.tokens_per_minute as i64)
        .bind(s.max_in_flight.map(i64::from))
        .bind(s.status.as_str())
        .bind(&s.timezone)
        .bind(s.active_from)
        .bind(s.active_until)
        .bind(serde_json::to_string(&s.weekly_windows).unwrap_or_else(|_| "[]".into()))
        .bind(s.budget_tokens.map(|v| v as i64))
        .bind(s.budget_usd)
        .bind(s.budget_period.as_str())
        .bind(serde_json::to_string(&s.allowed_models).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&s.allowed_mcp_servers).unwrap_or_else(|_| "[]".into()))
}
