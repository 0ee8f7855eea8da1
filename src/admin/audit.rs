//! `/api/v1/audit`: every change made through the admin API (and the
//! seed), newest first.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::ApiState;
use super::error::{choice_param, int_param, ApiError, ApiJson, ErrorBody, Query};
use crate::store::AuditEntry;

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// What the audit log records changes of.
const ENTITY_TYPES: [&str; 7] = [
    "group",
    "tenant",
    "key",
    "model",
    "mcp_server",
    "capacity",
    "server",
];

/// The kinds of entity in the audit log (for the document; the handler
/// checks [`ENTITY_TYPES`]).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EntityType {
    Group,
    Tenant,
    Key,
    Model,
    McpServer,
    Capacity,
    Server,
}

/// The audit log's filters and page. Values are parsed by the handler so
/// a bad one is a 400 that names it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only changes of this kind of entity.
    #[param(value_type = Option<EntityType>, inline)]
    entity_type: Option<String>,
    /// Only changes of this entity (a group or model name, a tenant or key
    /// id, `pool/server` for a server).
    #[param(max_length = 200)]
    entity_id: Option<String>,
    /// Return rows with an id below this one (the previous page's last id).
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Rows per page; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody)))]
async fn list_audit(
    State(s): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> ApiJson<Vec<AuditEntry>> {
    let entity_type = choice_param("entity_type", q.entity_type.as_deref(), &ENTITY_TYPES)?;
    if q.entity_id
        .as_ref()
        .is_some_and(|id| id.chars().count() > 200)
    {
        return Err(ApiError::invalid(
            "entity_id",
            "must be at most 200 characters",
        ));
    }
    let before = int_param("before", q.before.as_deref(), 1, i64::MAX)?;
    let limit = int_param("limit", q.limit.as_deref(), 1, 1000)?.unwrap_or(100);
    let rows = s
        .llm
        .store
        .audit_log(entity_type, q.entity_id.as_deref(), before, limit)
        .await?;
    Ok(Json(rows))
}
