//! The audit log: every mutation writes its row in its own transaction,
//! and actions taken outside the store are recorded the same way.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};
use utoipa::ToSchema;

use super::{get, opt_time, unix_ms, Store, StoreError};

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

impl Store {
    pub(super) async fn audit(
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
        .bind(unix_ms())
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
}
