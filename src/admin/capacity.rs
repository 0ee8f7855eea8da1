//! `/api/v1/capacity` and `/api/v1/fairshare`: this process's admission
//! ceiling and how the fair queue shares each model pool.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{ApiState, Change};
use super::error::{ApiError, ApiJson, ApiResult, Body, ErrorBody};
use crate::store::IN_FLIGHT_MAX;

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_capacity, put_capacity))
        .routes(routes!(fairshare))
}

/// The global ceiling and each model pool's load. `max_in_flight` is the
/// ceiling under the name the production checklist uses;
/// `global_max_in_flight` repeats it under the configuration's name.
#[derive(Serialize, ToSchema)]
pub struct CapacityView {
    max_in_flight: u32,
    global_max_in_flight: u32,
    in_flight: u32,
    queued: usize,
    pools: Vec<PoolLoad>,
}

/// One model pool's size and load.
#[derive(Serialize, ToSchema)]
pub struct PoolLoad {
    pool: String,
    max_in_flight: u32,
    in_flight: u32,
    queued: usize,
}

/// Body of `PUT /capacity`: `{"max_in_flight": 128}`, or the same under the
/// configuration's name `global_max_in_flight`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityChange {
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(alias = "global_max_in_flight")]
    max_in_flight: u32,
}

fn capacity_view(s: &ApiState) -> ApiResult<CapacityView> {
    let snap = s.llm.scheduler.snapshot();
    Ok(CapacityView {
        max_in_flight: snap.global,
        global_max_in_flight: snap.global,
        in_flight: snap.in_flight,
        queued: snap.queued,
        pools: snap
            .pools
            .into_iter()
            .map(|p| PoolLoad {
                pool: p.pool,
                max_in_flight: p.size,
                in_flight: p.in_flight,
                queued: p.queued,
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/capacity", tag = "admission",
    responses((status = 200, body = CapacityView)))]
async fn get_capacity(State(s): State<ApiState>) -> ApiJson<CapacityView> {
    Ok(Json(capacity_view(&s)?))
}

/// Changes this process's global ceiling at once (waiters are let in when
/// it grows; when it shrinks, requests in flight finish undisturbed). The
/// value lasts until restart, where the configuration applies again.
#[utoipa::path(put, path = "/api/v1/capacity", tag = "admission", request_body = CapacityChange,
    responses((status = 200, body = CapacityView), (status = 400, body = ErrorBody)))]
async fn put_capacity(
    Change(s, actor): Change,
    Body(wanted): Body<CapacityChange>,
) -> ApiJson<CapacityView> {
    let global = wanted.max_in_flight;
    if !(1..=IN_FLIGHT_MAX).contains(&global) {
        return Err(ApiError::invalid(
            "max_in_flight",
            format!("must be 1 to {IN_FLIGHT_MAX}"),
        ));
    }
    let before = s.llm.scheduler.global();
    let detail = json!({ "global_max_in_flight_before": before, "global_max_in_flight": global });
    s.llm
        .store
        .record(&actor, "capacity.update", "capacity", "global", &detail)
        .await?;
    s.llm.scheduler.set_global(global);
    Ok(Json(capacity_view(&s)?))
}

#[utoipa::path(get, path = "/api/v1/fairshare", tag = "admission",
    responses((status = 200, description = "Per pool: size, in flight, queued, and per group and tenant (`group/tenant id`) the weight, its share among active siblings, in flight, queued and tokens served since the pool was last idle", body = Object)))]
async fn fairshare(State(s): State<ApiState>) -> ApiJson<obleth_filters::admission::Snapshot> {
    Ok(Json(s.llm.scheduler.snapshot()))
}
