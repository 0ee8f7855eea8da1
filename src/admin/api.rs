//! The admin API under `/api/v1/`: groups, tenants, keys, models, MCP
//! servers, the audit log, budgets, admission capacity and usage, one file per resource,
//! each with its handlers and the `routes()` merged here. Handlers that
//! change something take [`Change`]: the state and who acts.
//! Every route needs `Authorization: Bearer $OBLETH_ADMIN_TOKEN`; every
//! mutation is audited in its own transaction and then propagated to the
//! caches of every replica. Every error, including unknown routes and
//! methods, is JSON ([`super::error`]). The OpenAPI document is generated
//! from the handlers, refined where attributes cannot say enough
//! (`admin/doc.rs`), and lists the pools of the live configuration.
//!
//! The pools and their servers' runtime state (`pools.rs`) are part of the
//! edge and are served whether or not the LLM plane runs; the other
//! resources exist only with it, and without it their paths answer 404
//! saying so.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use super::error::{
    decode, json_method_not_allowed, not_found, ApiError, ApiResult, ErrorBody, ErrorDetail,
};
use super::EdgeRuntime;
use super::{
    audit, budgets, capacity, certificates, doc, groups, keys, mcp_servers, models, pools, tenants,
    usage,
};
use crate::llm::LlmState;

/// Where the admin API learns the pools of the live configuration, which a
/// reload (SIGHUP) may change: a model's `pool` must be one of them.
pub trait PoolDirectory: Send + Sync {
    /// The names of the pools requests are routed to right now.
    fn pool_names(&self) -> Vec<String>;
}

/// What the handlers of the LLM plane's resources share.
#[derive(Clone)]
pub struct ApiState {
    pub(super) llm: Arc<LlmState>,
    pub(super) pools: Arc<dyn PoolDirectory>,
}

/// The SHA-256 of the admin token, which every request must present.
#[derive(Clone, Copy)]
struct TokenDigest([u8; 32]);

/// What every handler that changes something starts from: the state it
/// changes and who makes the change (for the audit log).
pub(super) struct Change(pub ApiState, pub String);

impl FromRequestParts<ApiState> for Change {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Change(state.clone(), actor(&parts.headers)))
    }
}

/// A list of stored items as the API shows them.
pub(super) fn views<T, V: From<T>>(items: Vec<T>) -> Json<Vec<V>> {
    Json(items.into_iter().map(V::from).collect())
}

/// Who made a change: the `x-obleth-actor` header, else `admin`.
pub(super) fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-obleth-actor")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "admin".into())
}

/// JSON merge patch: keys of `patch` replace those of `current`; the
/// result is decoded like a request body (400 naming the field).
pub(super) fn merge<T: Serialize + DeserializeOwned>(current: &T, patch: Value) -> ApiResult<T> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a patch must be a JSON object",
        ));
    };
    let mut value = serde_json::to_value(current)
        .map_err(|e| ApiError::unavailable(format!("cannot read the stored value: {e}")))?;
    if let Value::Object(fields) = &mut value {
        for (k, v) in patch {
            fields.insert(k, v);
        }
    }
    decode(value)
}

/// Refuses every request under `/api/v1` (known route or not) without the
/// admin token, compared in constant time.
async fn require_token(State(token): State<TokenDigest>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| openssl::sha::sha256(t.trim().as_bytes()));
    if !req.uri().path().starts_with("/api/v1/") {
        // Outside the API (only unknown paths of the admin listener get here).
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let credentials = req
        .headers()
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .count();
    if credentials > 1 {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "more than one Authorization header; send one admin token",
        )
        .into_response();
    }
    match presented {
        Some(digest) if openssl::memcmp::eq(&digest, &token.0) => next.run(req).await,
        _ => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin token").into_response()
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "obleth admin API", description = "The runtime state of the pools' servers, and, where the LLM plane runs, tenants, API keys, models, budgets, admission and the audit log of an obleth gateway. Every error is `{\"error\":{\"message\",\"field\"}}`."),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("admin_token" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/api/v1` router (token-protected), including its OpenAPI document:
/// the pools always, the LLM plane's resources when `llm` is given.
pub fn router(llm: Option<Arc<LlmState>>, edge: EdgeRuntime, admin_token: &str) -> Router {
    let token = TokenDigest(openssl::sha::sha256(admin_token.as_bytes()));
    let pools = edge.pools;
    let mut routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(pools::routes().with_state(pools::PoolsState::new(pools.clone(), llm.clone())))
        .merge(
            certificates::routes().with_state(certificates::CertificatesState {
                registry: edge.certificates,
                llm: llm.clone(),
            }),
        );
    let plane = llm.is_some();
    if let Some(llm) = llm {
        let state = ApiState {
            llm,
            pools: Arc::new(pools.clone()),
        };
        routes = routes.merge(
            OpenApiRouter::new()
                .merge(groups::routes())
                .merge(tenants::routes())
                .merge(keys::routes())
                .merge(models::routes())
                .merge(mcp_servers::routes())
                .merge(audit::routes())
                .merge(budgets::routes())
                .merge(capacity::routes())
                .merge(usage::routes())
                .with_state(state),
        );
    }
    let (router, api) = routes.split_for_parts();
    let document = Arc::new(doc::refine(&api));
    let router = router.route(
        "/api/v1/openapi.json",
        get(move || {
            let live: Vec<(String, Vec<String>)> = pools
                .borrow()
                .iter()
                .map(|p| {
                    let servers = p
                        .servers
                        .iter()
                        .flat_map(|s| [s.config.name.clone(), s.config.address.to_string()]);
                    (p.name().to_string(), servers.collect())
                })
                .collect();
            let document = doc::with_pools(&document, &live);
            async move { Json(document) }
        }),
    );
    let router = if plane {
        router.fallback(not_found)
    } else {
        router.fallback(no_llm_plane)
    };
    router
        .layer(middleware::map_response(json_method_not_allowed))
        .layer(middleware::from_fn_with_state(token, require_token))
}

/// Paths outside the edge's resources when no route declares `llm:`.
async fn no_llm_plane() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route: no route declares llm:, so this obleth runs no LLM plane and its admin API serves only /api/v1/pools, /api/v1/certificates and /api/v1/openapi.json",
    )
}
