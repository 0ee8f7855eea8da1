//! The store of record: fair-share groups, tenants, API keys, models, MCP
//! servers and the audit log, in Postgres (production) or a SQLite file (embedded default),
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
//!
//! One file per resource, each holding the resource's spec as the admin API
//! reads and writes it, its validation, its row mapping and its queries:
//!
//! - `mod.rs` (this file): the [`Store`] handle, connecting and migrating,
//!   write transactions, [`StoreError`], ids and times, row helpers.
//! - `validate.rs`: the limits and name, number, time and URL rules the
//!   resources share, the patterns the OpenAPI document shows for them,
//!   and [`opt_time`] (timestamps as RFC 3339 text).
//! - `groups.rs`: fair-share groups.
//! - `tenants.rs`: tenants, their schedules and budgets.
//! - `keys.rs`: API keys, and the lookup of a key's principal on the
//!   request path.
//! - `models.rs`: models and the namespace of their names and aliases.
//! - `mcp_servers.rs`: the MCP servers behind `/mcp/{server}`.
//! - `audit.rs`: the audit row every mutation writes, and reading the log.
//! - `secrets.rs`: upstream keys and MCP credentials sealed at rest.

mod audit;
mod groups;
mod keys;
mod mcp_servers;
mod models;
pub mod secrets;
mod tenants;
mod validate;

use serde::Deserialize;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use audit::AuditEntry;
pub use groups::Group;
pub use keys::KeySpec;
pub use mcp_servers::{split_auth_header, McpServer, McpServerSpec, McpTransport, ToolNameSchema};
pub use models::{ModelNameSchema, ModelSpec};
use secrets::UpstreamKeyCipher;
pub use tenants::{
    AsStr, DayName, McpGrantSchema, PeriodName, StatusName, TenantRecord, TenantSpec, WindowSchema,
};
pub use validate::*;

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
    /// Whether the database could not be reached (worth retrying later),
    /// rather than refusing what was asked of it.
    pub fn is_unreachable(&self) -> bool {
        fn unreachable(e: &sqlx::Error) -> bool {
            match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Migrate(m) => match m.as_ref() {
                    sqlx::migrate::MigrateError::Execute(inner) => unreachable(inner),
                    _ => false,
                },
                _ => false,
            }
        }
        matches!(self, StoreError::Database(e) if unreachable(e))
    }

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
pub fn unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A random id with a readable prefix, e.g. `ten_3f9a…`.
pub fn new_id(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 12];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| StoreError::Crypto(e.to_string()))?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
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

/// A query on either database, as the resources' `bind_*` helpers fill it.
type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

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
        // Lazy: a database that is down at start-up is waited for (see
        // `llm::LlmState::start`), not a reason to exit.
        let pool = options
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(&url)?;
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

    /// Runs `sql`, whose one parameter is `id`, and decodes the row it
    /// finds, or answers `NotFound` naming the `entity` and `id`: how every
    /// read of a single group, tenant, key or model ends.
    async fn find<T>(
        &self,
        entity: &str,
        sql: &str,
        id: &str,
        decode: impl FnOnce(&AnyRow) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match sqlx::query(sql).bind(id).fetch_optional(&self.pool).await? {
            Some(row) => decode(&row),
            None => Err(StoreError::NotFound(format!("{entity} {id:?}"))),
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
        let sql = format!("DELETE FROM {table} WHERE {column} = $1");
        Self::write_one(&mut tx, sqlx::query(&sql).bind(id), entity, entity, id).await?;
        let action = format!("{entity}.delete");
        Self::audit(&mut tx, actor, &action, entity, id, &serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `statement`, which writes the one row of `entity` `id`: a
    /// constraint it breaks is reported about `what`, and no such row is
    /// `NotFound`.
    async fn write_one(
        tx: &mut Transaction<'static, Any>,
        statement: AnyQuery<'_>,
        what: &str,
        entity: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let done = statement
            .execute(&mut **tx)
            .await
            .map_err(|e| classify(e, what))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("{entity} {id:?}")));
        }
        Ok(())
    }
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

fn json_list<T: for<'de> Deserialize<'de>>(field: &str, text: &str) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::invalid(field, format!("stored value unreadable: {e}")))
}
