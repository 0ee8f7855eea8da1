//! `/api/v1/pools`: the pools of the live configuration with their servers,
//! and each server's runtime state and weight, as HAProxy's `set server …
//! state` and `set server … weight` change them. The state itself belongs
//! to the pools (`edge/pool.rs`); these handlers show and change it.
//!
//! These routes are served with or without the LLM plane. With it, a change
//! writes its audit row (actor, before and after) before it applies, as
//! every mutation does; without it there is no store to write to, and the
//! change is logged at info with the same facts. Either way it is logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::actor;
use super::error::{decode, ApiError, ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::config::Algorithm;
use crate::edge::pool::{AdminState, LivePools, Pool, Server, Setting, MAX_WEIGHT};
use crate::llm::LlmState;

/// What the pool handlers share.
#[derive(Clone)]
pub(super) struct PoolsState {
    pools: LivePools,
    /// Where changes are audited: the store of the LLM plane, when it runs.
    llm: Option<Arc<LlmState>>,
    /// One change at a time, so an audit row's `before` is the setting the
    /// change replaced.
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl PoolsState {
    pub(super) fn new(pools: LivePools, llm: Option<Arc<LlmState>>) -> Self {
        Self {
            pools,
            llm,
            changes: Arc::default(),
        }
    }
}

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<PoolsState> {
    OpenApiRouter::new()
        .routes(routes!(list_pools))
        .routes(routes!(get_pool))
        .routes(routes!(put_server))
}

/// A server's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// In rotation, subject to health.
    Ready,
    /// No new requests; requests in flight finish and health checks go on.
    Drain,
    /// No new requests and no health checks; the server counts as down.
    Maint,
}

impl From<AdminState> for ServerState {
    fn from(s: AdminState) -> Self {
        match s {
            AdminState::Ready => ServerState::Ready,
            AdminState::Drain => ServerState::Drain,
            AdminState::Maint => ServerState::Maint,
        }
    }
}

impl From<ServerState> for AdminState {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Ready => AdminState::Ready,
            ServerState::Drain => AdminState::Drain,
            ServerState::Maint => AdminState::Maint,
        }
    }
}

/// What health checks and passive ejection say of a server: `ejected`
/// after failed checks or a refused connection, and while in `maint`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Ejected,
}

/// How a pool picks a server (`pools[].algorithm`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    RoundRobin,
    LeastInFlight,
    Random,
    ConsistentHash,
}

/// A pool of the live configuration.
#[derive(Serialize, ToSchema)]
pub struct PoolView {
    /// `pools[].name`.
    name: String,
    algorithm: AlgorithmName,
    /// Whether the pool has active health checks (`pools[].health_check`).
    health_checked: bool,
    servers: Vec<ServerView>,
}

/// One server of a pool and its runtime state.
#[derive(Serialize, ToSchema)]
pub struct ServerView {
    /// The address as written in the configuration: the server's name in
    /// this API's paths, the access log and the metrics.
    name: String,
    /// The socket address it resolved to (also accepted in paths when it
    /// names one server of the pool).
    address: String,
    state: ServerState,
    /// The current weight: the configured one unless changed here.
    #[schema(minimum = 0, maximum = 1000)]
    weight: u32,
    /// `pools[].servers[].weight`.
    #[schema(minimum = 1, maximum = 1000)]
    configured_weight: u32,
    health: Health,
    /// Whether it is given new requests now: `ready`, a weight above 0 and
    /// healthy (a server at `max_connections` is skipped all the same).
    in_rotation: bool,
    /// Requests this process has in flight to it in the live pool.
    in_flight: usize,
}

/// Body of `PUT /pools/{pool}/servers/{server}`: the state, the weight, or
/// both; a field left out keeps its value. (The document's
/// `minProperties: 1` is added in `doc.rs`.)
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerChange {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    state: Option<ServerState>,
    /// The current weight, 0 to 1000. Weighted algorithms follow it at
    /// once; 0 gives the server no new requests, as `drain` does, while
    /// its state stays what it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 0, maximum = 1000)]
    weight: Option<u32>,
}

/// A field given as `null` is invalid, not absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)?
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must not be null (leave it out to keep it)"))
}

fn pool_view(pool: &Pool) -> PoolView {
    PoolView {
        name: pool.name().to_string(),
        algorithm: match pool.config.algorithm {
            Algorithm::RoundRobin => AlgorithmName::RoundRobin,
            Algorithm::LeastInFlight => AlgorithmName::LeastInFlight,
            Algorithm::Random => AlgorithmName::Random,
            Algorithm::ConsistentHash(_) => AlgorithmName::ConsistentHash,
        },
        health_checked: pool.config.health_check.is_some(),
        servers: pool.servers.iter().map(server_view).collect(),
    }
}

fn server_view(server: &Server) -> ServerView {
    let setting = server.setting();
    let healthy = server.is_healthy();
    ServerView {
        name: server.config.name.clone(),
        address: server.config.address.to_string(),
        state: setting.state.into(),
        weight: setting.weight,
        configured_weight: server.config.weight,
        health: if healthy {
            Health::Healthy
        } else {
            Health::Ejected
        },
        in_rotation: setting.state == AdminState::Ready && setting.weight > 0 && healthy,
        in_flight: server.in_flight(),
    }
}

/// The pool named `pool` and the index of its server `server`, or 404.
fn find<'a>(pools: &'a [Arc<Pool>], pool: &str, server: &str) -> ApiResult<(&'a Pool, usize)> {
    let p = find_pool(pools, pool)?;
    let index = p.find_server(server).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no server {server:?}"),
        )
    })?;
    Ok((p, index))
}

fn find_pool<'a>(pools: &'a [Arc<Pool>], pool: &str) -> ApiResult<&'a Pool> {
    pools
        .iter()
        .find(|p| p.name() == pool)
        .map(|p| &**p)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no pool {pool:?} in the live configuration"),
            )
        })
}

fn setting_json(s: Setting) -> serde_json::Value {
    json!({ "state": s.state.as_str(), "weight": s.weight })
}

/// Every pool requests are routed to right now, in configuration order.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolView>)))]
async fn list_pools(State(s): State<PoolsState>) -> Json<Vec<PoolView>> {
    Json(s.pools.borrow().iter().map(|p| pool_view(p)).collect())
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}", tag = "pools",
    params(("pool" = String, Path, description = "A pool of the live configuration")),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
async fn get_pool(State(s): State<PoolsState>, Path(pool): Path<String>) -> ApiJson<PoolView> {
    let pools = s.pools.borrow();
    Ok(Json(pool_view(find_pool(&pools, &pool)?)))
}

/// Sets a server's state, weight or both, at once and until restart (a
/// reload keeps them for a server whose address is unchanged; a weight
/// changed in the file applies over the one set here). A change is audited,
/// or logged when no store runs; repeating the current setting changes and
/// records nothing.
#[utoipa::path(put, path = "/api/v1/pools/{pool}/servers/{server}", tag = "pools",
    request_body = ServerChange,
    params(
        ("pool" = String, Path, description = "A pool of the live configuration"),
        ("server" = String, Path, description = "The server's address as written in the configuration (as `name` in the listing), or the address it resolved to")
    ),
    responses((status = 200, body = ServerView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_server(
    State(s): State<PoolsState>,
    headers: HeaderMap,
    Path((pool, server)): Path<(String, String)>,
    Body(body): Body<serde_json::Value>,
) -> ApiJson<ServerView> {
    // (Decoded here: serde would also take `["drain", 1]` for the struct.)
    if !body.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    let change: ServerChange = decode(body)?;
    if change.state.is_none() && change.weight.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give state, weight or both",
        ));
    }
    if change.weight.is_some_and(|w| w > MAX_WEIGHT) {
        return Err(ApiError::invalid(
            "weight",
            format!("must be 0 to {MAX_WEIGHT}"),
        ));
    }
    let actor = actor(&headers);
    let _one_at_a_time = s.changes.lock().await;
    let (name, before) = {
        let pools = s.pools.borrow();
        let (p, i) = find(&pools, &pool, &server)?;
        (p.servers[i].config.name.clone(), p.servers[i].setting())
    };
    let after = Setting {
        state: change.state.map_or(before.state, AdminState::from),
        weight: change.weight.unwrap_or(before.weight),
    };
    if after != before {
        let detail = json!({ "before": setting_json(before), "after": setting_json(after) });
        if let Some(llm) = &s.llm {
            llm.store
                .record(
                    &actor,
                    "server.update",
                    "server",
                    &format!("{pool}/{name}"),
                    &detail,
                )
                .await?;
        }
        tracing::info!(
            actor = %actor,
            pool = %pool,
            server = %name,
            before = %detail["before"],
            after = %detail["after"],
            "server state changed through the admin API"
        );
    }
    // Applied under the live pools' read lock, so a reload cannot replace
    // the pool between here and the copy it makes of the setting.
    let pools = s.pools.borrow();
    let (p, i) = find(&pools, &pool, &name)?;
    if after != before {
        p.apply(i, after);
    }
    Ok(Json(server_view(&p.servers[i])))
}
