//! `/api/v1/usage` and `/api/v1/usage/requests`: token and cost totals and
//! the latest requests, read from ClickHouse. Without ClickHouse both answer
//! 503 and name the write-ahead log that keeps the records meanwhile.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::ApiState;
use super::error::{choice_param, int_param, ApiError, ApiJson, ApiResult, ErrorBody, Query};
use crate::store::opt_time;

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(usage))
        .routes(routes!(usage_requests))
}

/// The groupings usage totals come in.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum GroupBy {
    Tenant,
    Key,
    Model,
}

/// Range, grouping and tenant of `GET /usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start of the range (RFC 3339); default 24 hours before `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End of the range, exclusive (RFC 3339); default now (this second
    /// included).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Default `tenant`.
    #[param(value_type = Option<GroupBy>, inline)]
    group_by: Option<String>,
    /// Only this tenant (id or name).
    tenant: Option<String>,
}

/// Usage totals over a time range.
#[derive(Serialize, ToSchema)]
pub struct UsageView {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    group_by: String,
    #[schema(value_type = Vec<Object>)]
    rows: Vec<obleth_filters::telemetry::UsageTotals>,
}

fn clickhouse(s: &ApiState) -> ApiResult<&obleth_filters::telemetry::ClickHouseSink> {
    s.llm.telemetry.clickhouse.as_ref().ok_or_else(|| {
        ApiError::unavailable(format!(
            "usage queries need ClickHouse (telemetry.clickhouse.url); records are kept in the write-ahead log at {}",
            s.llm.telemetry.wal.dir().display()
        ))
    })
}

fn unavailable(e: obleth_filters::telemetry::SinkError) -> ApiError {
    tracing::warn!("admin API: {e}");
    ApiError::unavailable("ClickHouse is unavailable")
}

fn timestamp(
    field: &str,
    text: Option<&str>,
    default: jiff::Timestamp,
) -> ApiResult<jiff::Timestamp> {
    let Some(text) = text else {
        return Ok(default);
    };
    opt_time::parse(text)
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).map_err(|e| e.to_string()))
        .map_err(|e| ApiError::invalid(field, e))
}

/// The tenant id for a tenant given by id or name.
async fn tenant_id(s: &ApiState, tenant: Option<&str>) -> ApiResult<Option<String>> {
    match tenant {
        None => Ok(None),
        Some(t) => Ok(Some(s.llm.store.tenant(t).await?.id)),
    }
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn usage(State(s): State<ApiState>, Query(q): Query<UsageQuery>) -> ApiJson<UsageView> {
    // Times are stored in whole seconds: include the current one.
    let now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let to = timestamp("to", q.to.as_deref(), now)?;
    let from = timestamp(
        "from",
        q.from.as_deref(),
        to - jiff::SignedDuration::from_hours(24),
    )?;
    let group_by = choice_param(
        "group_by",
        q.group_by.as_deref(),
        &["tenant", "key", "model"],
    )?
    .unwrap_or("tenant")
    .to_string();
    let tenant = tenant_id(&s, q.tenant.as_deref()).await?;
    let rows = clickhouse(&s)?
        .totals(
            &group_by,
            from.as_second(),
            to.as_second(),
            tenant.as_deref(),
        )
        .await
        .map_err(unavailable)?;
    Ok(Json(UsageView {
        from: from.to_string(),
        to: to.to_string(),
        group_by,
        rows,
    }))
}

/// Tenant and page size of `GET /usage/requests`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestLogQuery {
    /// The tenant (id or name).
    tenant: String,
    /// Rows; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/usage/requests", tag = "usage", params(RequestLogQuery),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn usage_requests(
    State(s): State<ApiState>,
    Query(q): Query<RequestLogQuery>,
) -> ApiJson<Vec<obleth_filters::telemetry::RequestRow>> {
    let limit = int_param("limit", q.limit.as_deref(), 1, 1000)?.unwrap_or(100);
    let tenant = s.llm.store.tenant(&q.tenant).await?.id;
    let rows = clickhouse(&s)?
        .recent(&tenant, limit as u32)
        .await
        .map_err(unavailable)?;
    Ok(Json(rows))
}
