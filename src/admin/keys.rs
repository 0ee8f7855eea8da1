//! `/api/v1/tenants/{id}/keys` and `/api/v1/keys/{id}`: a tenant's API
//! keys. A secret is shown once, when it is made; the store keeps only its
//! peppered hash.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use obleth_filters::auth::{display_prefix, new_secret};
use obleth_filters::records::ApiKey;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{merge, views, ApiState, Change};
use super::error::{ApiError, ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::store::{opt_time, KeySpec};

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, patch_key, delete_key))
        .routes(routes!(rotate_key))
}

/// An API key as the API shows it: never its secret or hash.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// `key_` and 24 hex digits.
    id: String,
    tenant_id: String,
    /// The secret's first characters, to recognise it by.
    prefix: String,
    name: String,
    disabled: bool,
    weight: u32,
    #[serde(with = "opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<i64>,
    max_in_flight: Option<u32>,
    tokens_per_minute: Option<u64>,
    budget_tokens: Option<u64>,
    budget_usd: Option<f64>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            tenant_id: k.tenant_id,
            prefix: k.prefix,
            name: k.name,
            disabled: k.disabled,
            weight: k.weight,
            expires_at: k.expires_at,
            max_in_flight: k.max_in_flight,
            tokens_per_minute: k.tokens_per_minute,
            budget_tokens: k.budget_tokens,
            budget_usd: k.budget_usd,
        }
    }
}

/// A key with its secret, returned once, at creation or rotation.
#[derive(Serialize, ToSchema)]
pub struct KeyWithSecret {
    key: KeyView,
    /// Shown only now; store it safely.
    secret: String,
}

/// A new secret: its display prefix, its hash and the secret itself.
fn fresh_secret(s: &ApiState) -> ApiResult<(String, String, String)> {
    let secret = new_secret().map_err(|e| ApiError::unavailable(e.to_string()))?;
    let hash = s.llm.resolver.hasher().hash(&secret);
    Ok((display_prefix(&secret), hash, secret))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    responses((status = 200, body = Vec<KeyView>), (status = 404, body = ErrorBody)))]
async fn list_keys(State(s): State<ApiState>, Path(id): Path<String>) -> ApiJson<Vec<KeyView>> {
    let tenant = s.llm.store.tenant(&id).await?;
    Ok(views(s.llm.store.keys_of_tenant(&tenant.id).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "tenant id (`ten_…`) or name")),
    request_body = KeySpec,
    responses((status = 201, body = KeyWithSecret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant has a key of that name", body = ErrorBody)))]
async fn create_key(
    Change(s, actor): Change,
    Path(id): Path<String>,
    Body(spec): Body<KeySpec>,
) -> ApiResult<(StatusCode, Json<KeyWithSecret>)> {
    let tenant = s.llm.store.tenant(&id).await?;
    let (prefix, hash, secret) = fresh_secret(&s)?;
    let key = s
        .llm
        .store
        .create_key(&actor, &tenant.id, &spec, &prefix, &hash)
        .await?;
    // A negative cache entry for this hash is impossible (fresh secret),
    // but other replicas may cache the tenant: refresh them.
    s.llm.changed(&[hash]).await;
    Ok((
        StatusCode::CREATED,
        Json(KeyWithSecret {
            key: key.into(),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn get_key(State(s): State<ApiState>, Path(id): Path<String>) -> ApiJson<KeyView> {
    Ok(Json(s.llm.store.key(&id).await?.0.into()))
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    request_body(content = Object, description = "Any fields of KeySpec, e.g. {\"disabled\": true}"),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant has another key of the new name", body = ErrorBody)))]
async fn patch_key(
    Change(s, actor): Change,
    Path(id): Path<String>,
    Body(patch): Body<Value>,
) -> ApiJson<KeyView> {
    let (current, hash) = s.llm.store.key(&id).await?;
    let spec: KeySpec = merge(&KeySpec::of(&current), patch)?;
    let key = s.llm.store.update_key(&actor, &id, &spec).await?;
    s.llm.changed(&[hash]).await;
    Ok(Json(key.into()))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted; the key stops working at once"), (status = 404, body = ErrorBody)))]
async fn delete_key(Change(s, actor): Change, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let (_, hash) = s.llm.store.key(&id).await?;
    s.llm.store.delete_key(&actor, &id).await?;
    s.llm.changed(&[hash]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the key's secret; the old one stops working at once.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyWithSecret), (status = 404, body = ErrorBody)))]
async fn rotate_key(Change(s, actor): Change, Path(id): Path<String>) -> ApiJson<KeyWithSecret> {
    let (_, old_hash) = s.llm.store.key(&id).await?;
    let (prefix, hash, secret) = fresh_secret(&s)?;
    let key = s.llm.store.rotate_key(&actor, &id, &prefix, &hash).await?;
    s.llm.changed(&[old_hash, hash]).await;
    Ok(Json(KeyWithSecret {
        key: key.into(),
        secret,
    }))
}
