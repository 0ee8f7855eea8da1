//! The store of record: fair-share groups, tenants, API keys, models and the
//! audit log, in Postgres (production) or a SQLite file (embedded default),
//! through one set of queries on sqlx's `Any` driver. Every mutation writes
//! its audit row in the same transaction. Nothing on the request path waits
//! on the store except the first lookup of a key no cache holds.
//!
//! Model names and aliases are one namespace, kept in the `model_names`
//! table (one row per name or alias, primary key on the string), so two
//! writers racing for one string cannot both win, on either database. On
//! SQLite, which allows one writer at a time and answers "database is
//! locked" to a transaction that cannot upgrade its read lock, writes are
//! serialised in-process and begin `IMMEDIATE`, and the file runs in WAL
//! mode (readers never wait for the writer).

mod rows;
pub mod secrets;

use async_trait::async_trait;
use obleth_filters::auth::{PrincipalSource, SourceError};
use obleth_filters::records::{ApiKey, Model, Principal, Tenant};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use rows::*;
use secrets::UpstreamKeyCipher;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }
}

/// Why a store operation failed; the admin API maps these to statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A conflict with the stored state that one field of the request
    /// caused: a name or alias already taken, a group that does not exist.
    #[error("{field}: {message}")]
    ConflictOn { field: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(String),
}

impl StoreError {
    /// A request value the store refuses (400 naming `field`).
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A request value that clashes with what is stored (409 naming
    /// `field`).
    pub fn conflict_on(field: &str, message: impl Into<String>) -> Self {
        StoreError::ConflictOn {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Maps constraint violations to conflicts and bad references.
fn classify(e: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return StoreError::Conflict(format!("{what} already exists"));
        }
        if db.is_foreign_key_violation() {
            return StoreError::invalid(what, "refers to something that does not exist");
        }
        if db.is_check_violation() {
            return StoreError::invalid(
                what,
                format!("a value is out of range ({})", db.message()),
            );
        }
    }
    StoreError::Database(e)
}

/// The group tenants join when they name none; it always exists.
pub const DEFAULT_GROUP: &str = "default";

/// Now, in Unix milliseconds (how the store keeps times).
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A random id with a readable prefix, e.g. `ten_3f9a…`.
pub fn new_id(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 12];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| StoreError::Crypto(e.to_string()))?;
    Ok(format!("{prefix}_{}", obleth_filters::auth::hex(&bytes)))
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    cipher: UpstreamKeyCipher,
    /// SQLite only: held for the whole of every write transaction.
    writer: Option<std::sync::Arc<Mutex<()>>>,
}

/// A write transaction and, on SQLite, the in-process writer lock it holds
/// until it is dropped.
type Write = (Transaction<'static, Any>, Option<OwnedMutexGuard<()>>);

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    pub async fn connect(url: &str, cipher: UpstreamKeyCipher) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url).ok_or_else(|| {
            StoreError::invalid("database_url", "must start with postgres:// or sqlite:")
        })?;
        let mut options =
            AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 16 });
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 5000",
                        // Readers see the last commit while a write goes on.
                        "PRAGMA journal_mode = WAL",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let url = if backend == Backend::Sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let pool = options
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        Ok(Store {
            pool,
            backend,
            cipher,
            writer: (backend == Backend::Sqlite).then(|| std::sync::Arc::new(Mutex::new(()))),
        })
    }

    /// Applies the migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES,
            Backend::Sqlite => &SQLITE,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))
    }

    /// Starts a write transaction. On SQLite it takes the in-process writer
    /// lock first, then begins `IMMEDIATE`: the database's write lock is
    /// taken at `BEGIN`, where SQLite waits for it (busy timeout) — a
    /// deferred transaction that read first would instead fail at once
    /// with "database is locked" if another connection still held the
    /// lock (say, a failed transaction whose rollback sqlx has only queued).
    async fn begin(&self) -> Result<Write, StoreError> {
        match &self.writer {
            Some(writer) => {
                let lock = writer.clone().lock_owned().await;
                Ok((self.pool.begin_with("BEGIN IMMEDIATE").await?, Some(lock)))
            }
            None => Ok((self.pool.begin().await?, None)),
        }
    }

    /// Deletes one row of `table` and audits it as `{entity}.delete`.
    async fn delete(
        &self,
        actor: &str,
        table: &str,
        column: &str,
        entity: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let (mut tx, _writer) = self.begin().await?;
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, entity))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("{entity} {id:?}")));
        }
        let action = format!("{entity}.delete");
        Self::audit(&mut tx, actor, &action, entity, id, &serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- audit ------------------------------------------------------------

    async fn audit(
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        action: &str,
        entity_type: &str,
        entity_id: &str,
        detail: &impl Serialize,
    ) -> Result<(), StoreError> {
        let detail = serde_json::to_string(detail).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(entity_type)
        .bind(entity_id)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records an action taken outside the store (e.g. a budget reset).
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        entity_type: &str,
        entity_id: &str,
        detail: &impl Serialize,
    ) -> Result<(), StoreError> {
        let (mut tx, _writer) = self.begin().await?;
        Self::audit(&mut tx, actor, action, entity_type, entity_id, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audit rows, newest first; `before` pages backwards by id.
    pub async fn audit_log(
        &self,
        entity_type: Option<&str>,
        entity_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, entity_type, entity_id, detail FROM audit_log
             WHERE ($1 = '' OR entity_type = $1) AND ($2 = '' OR entity_id = $2) AND id < $3
             ORDER BY id DESC LIMIT $4",
        )
        .bind(entity_type.unwrap_or(""))
        .bind(entity_id.unwrap_or(""))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AuditEntry::from_row).collect()
    }

    // ---- groups -----------------------------------------------------------

    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query("SELECT name, weight FROM fairshare_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Group::from_row).collect()
    }

    pub async fn group(&self, name: &str) -> Result<Group, StoreError> {
        sqlx::query("SELECT name, weight FROM fairshare_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Group::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("group {name:?}")))
    }

    /// Creates or, with `upsert`, replaces a group.
    pub async fn put_group(
        &self,
        actor: &str,
        group: &Group,
        upsert: bool,
    ) -> Result<Group, StoreError> {
        group.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        let now = now_ms();
        let exists = sqlx::query("SELECT name FROM fairshare_groups WHERE name = $1")
            .bind(&group.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if exists && !upsert {
            return Err(StoreError::Conflict(format!(
                "group {:?} already exists",
                group.name
            )));
        }
        let sql = if exists {
            "UPDATE fairshare_groups SET weight = $2, updated_at = $3 WHERE name = $1"
        } else {
            "INSERT INTO fairshare_groups (name, weight, created_at, updated_at) VALUES ($1, $2, $3, $3)"
        };
        sqlx::query(sql)
            .bind(&group.name)
            .bind(i64::from(group.weight))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, "group"))?;
        let action = if exists {
            "group.update"
        } else {
            "group.create"
        };
        Self::audit(&mut tx, actor, action, "group", &group.name, group).await?;
        tx.commit().await?;
        Ok(group.clone())
    }

    pub async fn delete_group(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        if name == DEFAULT_GROUP {
            return Err(StoreError::Conflict(format!(
                "the group {DEFAULT_GROUP:?} cannot be deleted: tenants created without a group join it"
            )));
        }
        self.delete(actor, "fairshare_groups", "name", "group", name)
            .await
            .map_err(|e| match e {
                StoreError::Invalid { .. } => {
                    StoreError::Conflict(format!("group {name:?} still has tenants"))
                }
                other => other,
            })
    }

    // ---- tenants ----------------------------------------------------------

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
        sqlx::query(&format!("{TENANT_SELECT} WHERE {column} = $1"))
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| TenantRecord::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("tenant {id_or_name:?}")))
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
        let now = now_ms();
        bind_tenant(
            sqlx::query(
                "INSERT INTO tenants (name, group_name, weight, tokens_per_minute, max_in_flight, status, timezone,
                   active_from, active_until, weekly_windows, budget_tokens, budget_usd, budget_period, allowed_models,
                   id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)",
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
        let done = bind_tenant(
            sqlx::query(
                "UPDATE tenants SET name = $1, group_name = $2, weight = $3, tokens_per_minute = $4, max_in_flight = $5,
                   status = $6, timezone = $7, active_from = $8, active_until = $9, weekly_windows = $10,
                   budget_tokens = $11, budget_usd = $12, budget_period = $13, allowed_models = $14, updated_at = $15
                 WHERE id = $16",
            ),
            spec,
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, &format!("tenant {:?}", spec.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("tenant {id:?}")));
        }
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

    /// The hashes of a tenant's keys, so caches holding them can be purged.
    pub async fn key_hashes_of_tenant(&self, tenant_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT hash FROM api_keys WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("hash")?))
            .collect()
    }

    // ---- keys -------------------------------------------------------------

    pub async fn keys_of_tenant(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "{KEY_SELECT} WHERE tenant_id = $1 ORDER BY created_at, name"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn key(&self, id: &str) -> Result<(ApiKey, String), StoreError> {
        let row = sqlx::query(&format!("{KEY_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {id:?}")))?;
        Ok((key_from_row(&row)?, row.try_get("hash")?))
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
        let now = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, disabled, weight, expires_at, tokens_per_minute,
               budget_tokens, budget_usd, created_at, updated_at, max_in_flight)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
        )
        .bind(&id)
        .bind(tenant_id)
        .bind(&spec.name)
        .bind(prefix)
        .bind(secret_hash)
        .bind(spec.disabled)
        .bind(i64::from(spec.weight))
        .bind(spec.expires_at)
        .bind(spec.tokens_per_minute.map(|v| v as i64))
        .bind(spec.budget_tokens.map(|v| v as i64))
        .bind(spec.budget_usd)
        .bind(now)
        .bind(spec.max_in_flight.map(i64::from))
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
        let done = sqlx::query(
            "UPDATE api_keys SET name = $1, disabled = $2, weight = $3, expires_at = $4, tokens_per_minute = $5,
               budget_tokens = $6, budget_usd = $7, updated_at = $8, max_in_flight = $10 WHERE id = $9",
        )
        .bind(&spec.name)
        .bind(spec.disabled)
        .bind(i64::from(spec.weight))
        .bind(spec.expires_at)
        .bind(spec.tokens_per_minute.map(|v| v as i64))
        .bind(spec.budget_tokens.map(|v| v as i64))
        .bind(spec.budget_usd)
        .bind(now_ms())
        .bind(id)
        .bind(spec.max_in_flight.map(i64::from))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, &format!("key {:?}", spec.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {id:?}")));
        }
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
        .bind(now_ms())
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

    // ---- models -----------------------------------------------------------

    pub async fn models(&self) -> Result<Vec<Model>, StoreError> {
        let rows = sqlx::query(&format!("{MODEL_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| model_from_row(r, &self.cipher))
            .collect()
    }

    pub async fn model(&self, name: &str) -> Result<Model, StoreError> {
        sqlx::query(&format!("{MODEL_SELECT} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| model_from_row(&r, &self.cipher))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("model {name:?}")))
    }

    /// Creates or replaces a model. `upstream_key`: `None` keeps the stored
    /// one on update. The spec is stored [normalized](ModelSpec::normalized);
    /// its name and aliases must be free (409 naming `name` or `aliases`).
    pub async fn put_model(
        &self,
        actor: &str,
        spec: &ModelSpec,
        create: bool,
    ) -> Result<Model, StoreError> {
        let spec = &spec.normalized();
        spec.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        let existing = sqlx::query("SELECT upstream_key FROM models WHERE name = $1")
            .bind(&spec.name)
            .fetch_optional(&mut *tx)
            .await?;
        match (&existing, create) {
            (Some(_), true) => {
                return Err(StoreError::Conflict(format!(
                    "model {:?} already exists",
                    spec.name
                )))
            }
            (None, false) => return Err(StoreError::NotFound(format!("model {:?}", spec.name))),
            _ => {}
        }
        if !create {
            sqlx::query("DELETE FROM model_names WHERE model = $1")
                .bind(&spec.name)
                .execute(&mut *tx)
                .await?;
        }
        Self::check_names_free(&mut tx, spec).await?;
        let stored_key: Option<String> = match &spec.upstream_key {
            Some(k) if k.is_empty() => None,
            Some(k) => Some(self.cipher.seal(k).map_err(StoreError::Crypto)?),
            None => existing.and_then(|r| {
                r.try_get::<Option<String>, _>("upstream_key")
                    .ok()
                    .flatten()
            }),
        };
        let sql = if create {
            "INSERT INTO models (name, aliases, pool, base_url, upstream_model, upstream_key, input_cost_per_token,
               output_cost_per_token, max_in_flight, admission_weight, context_window, enabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)"
        } else {
            "UPDATE models SET aliases = $2, pool = $3, base_url = $4, upstream_model = $5, upstream_key = $6,
               input_cost_per_token = $7, output_cost_per_token = $8, max_in_flight = $9, admission_weight = $10,
               context_window = $11, enabled = $12, updated_at = $13 WHERE name = $1"
        };
        sqlx::query(sql)
            .bind(&spec.name)
            .bind(serde_json::to_string(&spec.aliases).unwrap_or_else(|_| "[]".into()))
            .bind(spec.pool.as_deref())
            .bind(spec.base_url.as_deref())
            .bind(&spec.upstream_model)
            .bind(stored_key)
            .bind(spec.input_cost_per_token)
            .bind(spec.output_cost_per_token)
            .bind(i64::from(spec.max_in_flight))
            .bind(i64::from(spec.admission_weight))
            .bind(spec.context_window.map(i64::from))
            .bind(spec.enabled)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, &format!("model {:?}", spec.name)))?;
        Self::claim_names(&mut tx, spec).await?;
        let action = if create {
            "model.create"
        } else {
            "model.update"
        };
        Self::audit(
            &mut tx,
            actor,
            action,
            "model",
            &spec.name,
            &spec.redacted(),
        )
        .await?;
        tx.commit().await?;
        self.model(&spec.name).await
    }

    /// Refuses a name or alias that another model already uses, naming the
    /// field and the owner.
    async fn check_names_free(
        tx: &mut Transaction<'static, Any>,
        spec: &ModelSpec,
    ) -> Result<(), StoreError> {
        let wanted = std::iter::once(("name", &spec.name))
            .chain(spec.aliases.iter().map(|a| ("aliases", a)));
        for (field, name) in wanted {
            let owner = sqlx::query("SELECT model FROM model_names WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(row) = owner {
                let owner: String = row.try_get("model")?;
                let what = if &owner == name {
                    "the name"
                } else {
                    "an alias"
                };
                return Err(StoreError::conflict_on(
                    field,
                    format!("{name:?} is already {what} of the model {owner:?}; names and aliases of all models are one namespace"),
                ));
            }
        }
        Ok(())
    }

    /// Records the model's name and aliases in `model_names`. A concurrent
    /// writer that claimed one of them first makes the insert fail on the
    /// primary key: that is the race-free part of the check above.
    async fn claim_names(
        tx: &mut Transaction<'static, Any>,
        spec: &ModelSpec,
    ) -> Result<(), StoreError> {
        let names = std::iter::once(("name", &spec.name))
            .chain(spec.aliases.iter().map(|a| ("aliases", a)));
        for (field, name) in names {
            sqlx::query("INSERT INTO model_names (name, model) VALUES ($1, $2)")
                .bind(name)
                .bind(&spec.name)
                .execute(&mut **tx)
                .await
                .map_err(|e| match classify(e, "model name") {
                    StoreError::Conflict(_) => StoreError::conflict_on(
                        field,
                        format!("{name:?} was just taken by another model; names and aliases of all models are one namespace"),
                    ),
                    other => other,
                })?;
        }
        Ok(())
    }

    pub async fn delete_model(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        self.delete(actor, "models", "name", "model", name).await
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

fn bind_tenant<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    s: &'q TenantSpec,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
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
}

/// Booleans are `BOOLEAN` in Postgres and `INTEGER` in SQLite (the `Any`
/// driver cannot decode SQLite's boolean affinity).
pub(crate) fn get_bool(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<i64, _>(col)? != 0),
    }
}

pub(crate) fn get<T>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    Ok(row.try_get(col)?)
}
