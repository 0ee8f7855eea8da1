//! Fair-share groups: tenants in a group split the group's share by weight.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::validate::{check_plain_name, check_range, default_weight, WEIGHT_MAX};
use super::{classify, get, unix_ms, Store, StoreError, DEFAULT_GROUP};

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

impl Store {
    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query("SELECT name, weight FROM fairshare_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Group::from_row).collect()
    }

    pub async fn group(&self, name: &str) -> Result<Group, StoreError> {
        let sql = "SELECT name, weight FROM fairshare_groups WHERE name = $1";
        self.find("group", sql, name, Group::from_row).await
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
        let now = unix_ms();
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
}
