//! `/api/v1/tenants/{id}/budget` and `/api/v1/keys/{id}/budget`: where a
//! scope stands against its limits, and resetting its current term.

use axum::extract::State;
use axum::Json;
use obleth_filters::budget::Scope;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{ApiState, Change};
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody, Path};

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(tenant_budget))
        .routes(routes!(reset_tenant_budget))
        .routes(routes!(key_budget))
        .routes(routes!(reset_key_budget))
}

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

/// The budget scope of a tenant given by id or name, and its id.
async fn tenant_scope(s: &ApiState, id_or_name: &str) -> ApiResult<(String, Scope)> {
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(id_or_name).await?.into();
    let scope = crate::llm::tenant_scope(&tenant, jiff::Timestamp::now());
    Ok((tenant.id, scope))
}

/// The budget scope of a key.
async fn key_scope(s: &ApiState, id: &str) -> ApiResult<Scope> {
    let (key, _) = s.llm.store.key(id).await?;
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&key.tenant_id).await?.into();
    Ok(crate::llm::key_scope(&key, &tenant, jiff::Timestamp::now()))
}

/// The scope's standing; 503 when the budget store (Redis) cannot answer.
async fn budget_view(s: &ApiState, scope: Scope) -> ApiResult<BudgetView> {
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
    actor: &str,
    scope: Scope,
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
    let action = format!("{entity}.budget_reset");
    s.llm
        .store
        .record(actor, &action, entity, id, &detail)
        .await?;
    budget_view(s, scope).await
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}/budget", tag = "budgets",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn tenant_budget(State(s): State<ApiState>, Path(id): Path<String>) -> ApiJson<BudgetView> {
    let (_, scope) = tenant_scope(&s, &id).await?;
    Ok(Json(budget_view(&s, scope).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants/{id}/budget/reset", tag = "budgets",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn reset_tenant_budget(
    Change(s, actor): Change,
    Path(id): Path<String>,
) -> ApiJson<BudgetView> {
    let (tenant_id, scope) = tenant_scope(&s, &id).await?;
    Ok(Json(reset(&s, &actor, scope, "tenant", &tenant_id).await?))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}/budget", tag = "budgets", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn key_budget(State(s): State<ApiState>, Path(id): Path<String>) -> ApiJson<BudgetView> {
    Ok(Json(budget_view(&s, key_scope(&s, &id).await?).await?))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/budget/reset", tag = "budgets", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn reset_key_budget(Change(s, actor): Change, Path(id): Path<String>) -> ApiJson<BudgetView> {
    let scope = key_scope(&s, &id).await?;
    Ok(Json(reset(&s, &actor, scope, "key", &id).await?))
}
