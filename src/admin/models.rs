//! `/api/v1/models`: what LLM routes serve. Names and aliases of all models
//! are one namespace (409 on a clash); a model's `pool` must be a pool of
//! the live configuration (400 otherwise).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use obleth_filters::records::Model;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{merge, views, ApiState, Change};
use super::error::{ApiError, ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::store::{ModelSpec, StoreError};

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, patch_model, delete_model))
}

/// A model as the API shows it: the upstream key only as "set or not".
#[derive(Serialize, ToSchema)]
pub struct ModelView {
    name: String,
    aliases: Vec<String>,
    pool: Option<String>,
    base_url: Option<String>,
    upstream_model: String,
    /// Whether an upstream key is stored (it is never shown).
    upstream_key_set: bool,
    input_cost_per_token: f64,
    output_cost_per_token: f64,
    max_in_flight: u32,
    admission_weight: u32,
    context_window: Option<u32>,
    enabled: bool,
}

impl From<Model> for ModelView {
    fn from(m: Model) -> Self {
        Self {
            upstream_key_set: m.upstream_key.is_some(),
            name: m.name,
            aliases: m.aliases,
            pool: m.pool,
            base_url: m.base_url,
            upstream_model: m.upstream_model,
            input_cost_per_token: m.input_cost_per_token,
            output_cost_per_token: m.output_cost_per_token,
            max_in_flight: m.max_in_flight,
            admission_weight: m.admission_weight,
            context_window: m.context_window,
            enabled: m.enabled,
        }
    }
}

/// A model's pool must be one the live configuration has: a model on a
/// missing pool would answer 503 to every request.
fn check_pool(s: &ApiState, spec: &ModelSpec) -> ApiResult<()> {
    let Some(pool) = &spec.pool else {
        return Ok(());
    };
    let names = s.pools.pool_names();
    if names.iter().any(|n| n == pool) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "pool",
        format!(
            "{pool:?} is not a pool of the configuration (pools: {})",
            names.join(", ")
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, body = Vec<ModelView>)))]
async fn list_models(State(s): State<ApiState>) -> ApiJson<Vec<ModelView>> {
    Ok(views(s.llm.store.models().await?))
}

#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body = ModelSpec,
    responses((status = 201, body = ModelView), (status = 400, body = ErrorBody),
        (status = 409, description = "The name or an alias already names a model (names and aliases are one namespace)", body = ErrorBody)))]
async fn create_model(
    Change(s, actor): Change,
    Body(spec): Body<ModelSpec>,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    check_pool(&s, &spec)?;
    let model = s.llm.store.put_model(&actor, &spec, true).await?;
    s.llm.changed(&[]).await;
    Ok((StatusCode::CREATED, Json(model.into())))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
async fn get_model(State(s): State<ApiState>, Path(name): Path<String>) -> ApiJson<ModelView> {
    Ok(Json(s.llm.store.model(&name).await?.into()))
}

/// A JSON merge patch of the model. Giving a `pool` clears the `base_url`
/// and the other way round; `name` may only repeat the model's own.
#[utoipa::path(patch, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    request_body(content = Object, description = "Any fields of ModelSpec but name"),
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "An alias already names another model, or the patch would leave neither a pool nor a base_url", body = ErrorBody)))]
async fn patch_model(
    Change(s, actor): Change,
    Path(name): Path<String>,
    Body(mut patch): Body<Value>,
) -> ApiJson<ModelView> {
    let current = s.llm.store.model(&name).await?;
    if patch.get("name").is_some_and(|n| n != &json!(name)) {
        return Err(ApiError::invalid(
            "name",
            "cannot be changed; create a new model",
        ));
    }
    let given = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    let (pool, base_url) = (given(patch.get("pool")), given(patch.get("base_url")));
    if let Some(fields) = patch.as_object_mut() {
        match (pool, base_url) {
            (true, true) => {
                return Err(ApiError::invalid(
                    "base_url",
                    "give a pool or a base_url, not both",
                ))
            }
            (true, false) => {
                fields.entry("base_url").or_insert(Value::Null);
            }
            (false, true) => {
                fields.entry("pool").or_insert(Value::Null);
            }
            (false, false) if fields.contains_key("pool") && fields.contains_key("base_url") => {
                return Err(ApiError::invalid("pool", "give a pool or a base_url"))
            }
            (false, false) => {}
        }
    }
    let upstream_key = patch.get("upstream_key").cloned();
    let mut spec: ModelSpec = merge(&ModelSpec::of(&current), patch)?;
    if spec.pool.is_none() && spec.base_url.is_none() {
        return Err(StoreError::conflict_on(
            "pool",
            "the model would have neither a pool nor a base_url",
        )
        .into());
    }
    spec.upstream_key = match upstream_key {
        Some(Value::String(k)) => Some(k),
        Some(Value::Null) => Some(String::new()),
        _ => None,
    };
    check_pool(&s, &spec)?;
    let model = s.llm.store.put_model(&actor, &spec, false).await?;
    s.llm.changed(&[]).await;
    Ok(Json(model.into()))
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted; its name and aliases are free again"), (status = 404, body = ErrorBody)))]
async fn delete_model(Change(s, actor): Change, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.llm.store.delete_model(&actor, &name).await?;
    s.llm.changed(&[]).await;
    Ok(StatusCode::NO_CONTENT)
}
