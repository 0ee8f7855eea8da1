//! `/api/v1/tenants`: who may call LLM routes, under which limits. A tenant
//! is addressed by id or name; names never start with `ten_`, so each
//! string reaches one tenant.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use obleth_filters::records::WeeklyWindow;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{merge, views, ApiState, Change};
use super::error::{ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::store::{opt_time, AsStr, WindowSchema};
use crate::store::{StoreError, TenantRecord, TenantSpec};

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, patch_tenant, delete_tenant))
}

/// A tenant as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct TenantView {
    /// `ten_` and 24 hex digits.
    id: String,
    name: String,
    group: String,
    /// The group's weight, for reading the tenant's share.
    group_weight: u32,
    weight: u32,
    tokens_per_minute: u64,
    max_in_flight: Option<u32>,
    /// `active` or `suspended`.
    status: String,
    timezone: String,
    #[serde(with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    active_from: Option<i64>,
    #[serde(with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    active_until: Option<i64>,
    #[schema(value_type = Vec<WindowSchema>)]
    weekly_windows: Vec<WeeklyWindow>,
    budget_tokens: Option<u64>,
    budget_usd: Option<f64>,
    /// `lifetime` or `monthly`.
    budget_period: String,
    allowed_models: Vec<String>,
    allowed_mcp_servers: Vec<String>,
    #[serde(with = "opt_time")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Option<i64>,
    #[serde(with = "opt_time")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: Option<i64>,
}

impl From<TenantRecord> for TenantView {
    fn from(r: TenantRecord) -> Self {
        let s = r.spec;
        Self {
            id: r.id,
            name: s.name,
            group: s.group,
            group_weight: r.group_weight,
            weight: s.weight,
            tokens_per_minute: s.tokens_per_minute,
            max_in_flight: s.max_in_flight,
            status: s.status.as_str().to_string(),
            timezone: s.timezone,
            active_from: s.active_from,
            active_until: s.active_until,
            weekly_windows: s.weekly_windows,
            budget_tokens: s.budget_tokens,
            budget_usd: s.budget_usd,
            budget_period: s.budget_period.as_str().to_string(),
            allowed_models: s.allowed_models,
            allowed_mcp_servers: s.allowed_mcp_servers,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantView>)))]
async fn list_tenants(State(s): State<ApiState>) -> ApiJson<Vec<TenantView>> {
    Ok(views(s.llm.store.tenants().await?))
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = TenantSpec,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody),
        (status = 409, description = "The name is taken, or the group does not exist", body = ErrorBody)))]
async fn create_tenant(
    Change(s, actor): Change,
    Body(spec): Body<TenantSpec>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    let tenant = s.llm.store.create_tenant(&actor, &spec).await?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "id (`ten_…`) or name")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn get_tenant(State(s): State<ApiState>, Path(id): Path<String>) -> ApiJson<TenantView> {
    Ok(Json(s.llm.store.tenant(&id).await?.into()))
}

/// A JSON merge patch of the tenant's settings (`null` clears optional
/// ones). A patch that breaks `active_from < active_until` only together
/// with the stored bound is a 409; one whose own bounds are inverted, 400.
#[utoipa::path(patch, path = "/api/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "id (`ten_…`) or name")),
    request_body(content = Object, description = "Any fields of TenantSpec; null clears optional ones"),
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The new name is taken, the group does not exist, or the patch conflicts with the stored activity window", body = ErrorBody)))]
async fn patch_tenant(
    Change(s, actor): Change,
    Path(id): Path<String>,
    Body(patch): Body<Value>,
) -> ApiJson<TenantView> {
    let current = s.llm.store.tenant(&id).await?;
    let sets_both_bounds = ["active_from", "active_until"]
        .iter()
        .all(|k| patch.get(k).is_some_and(|v| !v.is_null()));
    let spec: TenantSpec = merge(&current.spec, patch)?;
    if let Err(e) = spec.check_active_window() {
        return Err(match e {
            StoreError::Invalid { field, message } if !sets_both_bounds => {
                StoreError::conflict_on(&field, format!("{message} (with the stored value)"))
            }
            other => other,
        }
        .into());
    }
    let updated = s
        .llm
        .store
        .update_tenant(&actor, &current.id, &spec)
        .await?;
    let hashes = s.llm.store.key_hashes_of_tenant(&current.id).await?;
    s.llm.changed(&hashes).await;
    Ok(Json(updated.into()))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "id (`ten_…`) or name")),
    responses((status = 204, description = "Deleted, with its keys"), (status = 404, body = ErrorBody)))]
async fn delete_tenant(Change(s, actor): Change, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let current = s.llm.store.tenant(&id).await?;
    let hashes = s.llm.store.key_hashes_of_tenant(&current.id).await?;
    s.llm.store.delete_tenant(&actor, &current.id).await?;
    s.llm.changed(&hashes).await;
    Ok(StatusCode::NO_CONTENT)
}
