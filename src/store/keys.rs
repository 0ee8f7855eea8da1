//! API keys: a tenant's credentials, each with its own weight, caps and
//! budget, and the lookup of a key's principal on the request path.

use async_trait::async_trait;
use obleth_filters::auth::{PrincipalSource, SourceError};
use obleth_filters::records::{ApiKey, Principal, Tenant};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::validate::{
    check_money, check_plain_name, check_range, default_weight, COUNT_MAX, IN_FLIGHT_MAX,
    WEIGHT_MAX,
};
use super::{classify, get, get_bool, new_id, opt_time, unix_ms, AnyQuery, Store, StoreError};

const KEY_SELECT: &str =
    "SELECT id, tenant_id, name, prefix, hash, disabled, weight, expires_at, max_in_flight,
    tokens_per_minute, budget_tokens, budget_usd FROM api_keys";

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

/// Binds a key's settings as `$1`–`$8`, in the order the insert and the
/// update list them.
fn bind_key<'q>(q: AnyQuery<'q>, s: &'q KeySpec) -> AnyQuery<'q> {
    q.bind(&s.name)
        .bind(s.disabled)
        .bind(i64::from(s.weight))
        .bind(s.expires_at)
        .bind(s.tokens_per_minute.map(|v| v as i64))
        .bind(s.budget_tokens.map(|v| v as i64))
        .bind(s.budget_usd)
        .bind(s.max_in_flight.map(i64::from))
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

impl Store {
    /// The hashes of a tenant's keys, so caches holding them can be purged.
    pub async fn key_hashes_of_tenant(&self, tenant_id: &str) -> Result<Vec<String>, StoreError> {
        self.key_hashes("SELECT hash FROM api_keys WHERE tenant_id = $1", tenant_id)
            .await
    }

    /// The hashes of the keys of every tenant in `group`: the cached
    /// principals a change of the group's weight makes stale.
    pub async fn key_hashes_of_group(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT k.hash FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
            WHERE t.group_name = $1";
        self.key_hashes(sql, group).await
    }

    /// The `hash` column of the rows `sql` selects for `id`.
    async fn key_hashes(&self, sql: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(sql).bind(id).fetch_all(&self.pool).await?;
        rows.iter().map(|r| get(r, "hash")).collect()
    }

    pub async fn keys_of_tenant(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "{KEY_SELECT} WHERE tenant_id = $1 ORDER BY created_at, name"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// A key and the hash of its secret (what the caches are keyed on).
    pub async fn key(&self, id: &str) -> Result<(ApiKey, String), StoreError> {
        let sql = format!("{KEY_SELECT} WHERE id = $1");
        self.find("key", &sql, id, |r| Ok((key_from_row(r)?, get(r, "hash")?)))
            .await
    }

    /// Creates a key with `secret_hash` (the caller made the secret).
    pub async fn create_key(
        &self,
        actor: &str,
        tenant_id: &str,
        spec: &KeySpec,
        prefix: &str,
        secret_hash: &str,
    ) -> Result<ApiKey, StoreError> {
        spec.validate()?;
        let id = new_id("key")?;
        let (mut tx, _writer) = self.begin().await?;
        let now = unix_ms();
        bind_key(
            sqlx::query(
                "INSERT INTO api_keys (name, disabled, weight, expires_at, tokens_per_minute, budget_tokens,
                   budget_usd, max_in_flight, id, tenant_id, prefix, hash, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
            ),
            spec,
        )
        .bind(&id)
        .bind(tenant_id)
        .bind(prefix)
        .bind(secret_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, &format!("key {:?} of tenant {tenant_id:?}", spec.name)))?;
        Self::audit(
            &mut tx,
            actor,
            "key.create",
            "key",
            &id,
            &serde_json::json!({ "tenant_id": tenant_id, "spec": spec, "prefix": prefix }),
        )
        .await?;
        tx.commit().await?;
        Ok(self.key(&id).await?.0)
    }

    pub async fn update_key(
        &self,
        actor: &str,
        id: &str,
        spec: &KeySpec,
    ) -> Result<ApiKey, StoreError> {
        spec.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        let update = bind_key(
            sqlx::query(
                "UPDATE api_keys SET name = $1, disabled = $2, weight = $3, expires_at = $4, tokens_per_minute = $5,
                   budget_tokens = $6, budget_usd = $7, max_in_flight = $8, updated_at = $9 WHERE id = $10",
            ),
            spec,
        )
        .bind(unix_ms())
        .bind(id);
        Self::write_one(&mut tx, update, &format!("key {:?}", spec.name), "key", id).await?;
        Self::audit(&mut tx, actor, "key.update", "key", id, spec).await?;
        tx.commit().await?;
        Ok(self.key(id).await?.0)
    }

    /// Replaces a key's secret; the old one stops working at once.
    pub async fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        prefix: &str,
        secret_hash: &str,
    ) -> Result<ApiKey, StoreError> {
        let (mut tx, _writer) = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET prefix = $1, hash = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(prefix)
        .bind(secret_hash)
        .bind(unix_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {id:?}")));
        }
        Self::audit(
            &mut tx,
            actor,
            "key.rotate",
            "key",
            id,
            &serde_json::json!({ "prefix": prefix }),
        )
        .await?;
        tx.commit().await?;
        Ok(self.key(id).await?.0)
    }

    pub async fn delete_key(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        self.delete(actor, "api_keys", "id", "key", id).await
    }
}

#[async_trait]
impl PrincipalSource for Store {
    async fn principal_by_key_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<Principal>, SourceError> {
        let row = sqlx::query(&format!("{KEY_SELECT} WHERE hash = $1"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| SourceError(e.to_string()))?;
        let Some(row) = row else { return Ok(None) };
        let key = key_from_row(&row).map_err(|e| SourceError(e.to_string()))?;
        let tenant: Tenant = match self.tenant(&key.tenant_id).await {
            Ok(t) => t.into(),
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(SourceError(e.to_string())),
        };
        Ok(Some(Principal { key, tenant }))
    }
}
