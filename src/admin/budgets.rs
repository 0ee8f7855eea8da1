//! `/api/v1/tenants/{id}/budget` and `/api/v1/keys/{id}/budget`: where a
//! scope stands against its limits, and resetting its current term.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::api::{actor, ApiState};
use super::error::{ApiError, ApiResult, ErrorBody, Path};

/// A scope's limits and where it stands now.
#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    /// `t:<tenant id>` or `k:<key id>`.
    scope: String,
    #[schema(value_type = Object)]
    limits: obleth_filters::budget::Limits,
    #[schema(value_type = Object)]
    standing: obleth_filters::budget::Standing,
}

/// The scope's standing; 503 when the budget store (Redis) cannot answer.
async fn budget_view(s: &ApiState, scope: obleth_filters::budget::Scope) -> ApiResult<BudgetView> {
    let standing = s
        .llm
        .budgets
        .standing(&scope, jiff::Timestamp::now().as_millisecond())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(BudgetView {
        scope: scope.id,
        limits: scope.limits,
        standing,
    })
}

/// Resets the scope's current term and audits what it stood at before.
async fn reset(
    s: &ApiState,
    headers: &HeaderMap,
    scope: obleth_filters::budget::Scope,
    entity: &str,
    id: &str,
) -> ApiResult<BudgetView> {
    let before = budget_view(s, scope.clone()).await?;
    s.llm
        .budgets
        .reset_term(&scope)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let detail = json!({ "period": scope.limits.period, "committed_tokens_before": before.standing.committed_tokens,
        "committed_usd_micros_before": before.standing.committed_usd_micros });
    s.llm
        .store
        .record(
            &actor(headers),
            &format!("{entity}.budget_reset"),
            entity,
            id,
            &detail,
        )
        .await?;
    budget_view(s, scope).await
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}/budget", tag = "budgets",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
pub(super) async fn tenant_budget(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&id).await?.into();
    let scope = crate::llm::tenant_scope(&tenant, jiff::Timestamp::now());
    Ok(Json(budget_view(&s, scope).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants/{id}/budget/reset", tag = "budgets",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
pub(super) async fn reset_tenant_budget(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&id).await?.into();
    let scope = crate::llm::tenant_scope(&tenant, jiff::Timestamp::now());
    let id = tenant.id.clone();
    Ok(Json(reset(&s, &headers, scope, "tenant", &id).await?))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}/budget", tag = "budgets", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
pub(super) async fn key_budget(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let (key, _) = s.llm.store.key(&id).await?;
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&key.tenant_id).await?.into();
    let scope = crate::llm::key_scope(&key, &tenant, jiff::Timestamp::now());
    Ok(Json(budget_view(&s, scope).await?))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/budget/reset", tag = "budgets", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
pub(super) async fn reset_key_budget(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let (key, _) = s.llm.store.key(&id).await?;
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&key.tenant_id).await?.into();
    let scope = crate::llm::key_scope(&key, &tenant, jiff::Timestamp::now());
    Ok(Json(reset(&s, &headers, scope, "key", &id).await?))
}
