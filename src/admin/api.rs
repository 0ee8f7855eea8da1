//! The admin API under `/api/v1/`: groups, tenants, keys, models, the
//! audit log, budgets and admission capacity. Every route needs `Authorization: Bearer $OBLETH_ADMIN_TOKEN`;
//! every mutation is audited in its own transaction and then propagated to
//! the caches of every replica. The OpenAPI document is generated from the
//! handlers below.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use obleth_filters::auth::{display_prefix, new_secret};
use obleth_filters::records::{ApiKey, Model};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::llm::LlmState;
use crate::store::{AuditEntry, Group, KeySpec, ModelSpec, StoreError, TenantRecord, TenantSpec};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    llm: Arc<LlmState>,
    token_digest: [u8; 32],
}

/// An error answered as `{"error":{"message","field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Invalid { field, message } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            StoreError::Database(_) | StoreError::Crypto(_) => {
                tracing::error!("admin API: {e}");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections are 400s with the parser's message.
pub struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                rejection.body_text(),
            )),
        }
    }
}

/// Who made a change: the `x-obleth-actor` header, else `admin`.
fn actor(headers: &HeaderMap) -> String {
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

/// JSON merge patch: keys of `patch` replace those of `current`.
fn merge<T: Serialize + DeserializeOwned>(current: &T, patch: Value) -> ApiResult<T> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a patch must be a JSON object",
        ));
    };
    let mut value = serde_json::to_value(current)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Value::Object(fields) = &mut value {
        for (k, v) in patch {
            fields.insert(k, v);
        }
    }
    serde_json::from_value(value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| openssl::sha::sha256(t.trim().as_bytes()));
    match presented {
        Some(digest) if openssl::memcmp::eq(&digest, &state.token_digest) => next.run(req).await,
        _ => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin token").into_response()
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "obleth admin API", description = "Tenants, API keys, models and the audit log of an obleth gateway."),
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

/// The `/api/v1` router (token-protected), including its OpenAPI document.
pub fn router(llm: Arc<LlmState>, admin_token: &str) -> Router {
    let state = ApiState {
        llm,
        token_digest: openssl::sha::sha256(admin_token.as_bytes()),
    };
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, put_group, delete_group))
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, patch_tenant, delete_tenant))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, patch_key, delete_key))
        .routes(routes!(rotate_key))
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, patch_model, delete_model))
        .routes(routes!(list_audit))
        .routes(routes!(tenant_budget))
        .routes(routes!(reset_tenant_budget))
        .routes(routes!(key_budget))
        .routes(routes!(reset_key_budget))
        .routes(routes!(get_capacity, put_capacity))
        .routes(routes!(fairshare))
        .routes(routes!(usage))
        .routes(routes!(usage_requests))
        .split_for_parts();
    let document = Arc::new(api);
    router
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

// ---- groups ----------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/groups", responses((status = 200, body = Vec<Group>)))]
async fn list_groups(State(s): State<ApiState>) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(s.llm.store.groups().await?))
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = Group,
    responses((status = 201, body = Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(group): Body<Group>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let group = s
        .llm
        .store
        .put_group(&actor(&headers), &group, false)
        .await?;
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
async fn get_group(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<Group>> {
    Ok(Json(s.llm.store.group(&name).await?))
}

/// Body of `PUT /groups/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GroupWeight {
    weight: u32,
}

#[utoipa::path(put, path = "/api/v1/groups/{name}", params(("name" = String, Path)), request_body = GroupWeight,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(w): Body<GroupWeight>,
) -> ApiResult<Json<Group>> {
    s.llm.store.group(&name).await?;
    let group = s
        .llm
        .store
        .put_group(
            &actor(&headers),
            &Group {
                name: name.clone(),
                weight: w.weight,
            },
            true,
        )
        .await?;
    let mut hashes = Vec::new();
    for t in s
        .llm
        .store
        .tenants()
        .await?
        .iter()
        .filter(|t| t.spec.group == name)
    {
        hashes.extend(s.llm.store.key_hashes_of_tenant(&t.id).await?);
    }
    s.llm.changed(&hashes).await;
    Ok(Json(group))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_group(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.llm.store.delete_group(&actor(&headers), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tenants ---------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/tenants", responses((status = 200, body = Vec<TenantRecord>)))]
async fn list_tenants(State(s): State<ApiState>) -> ApiResult<Json<Vec<TenantRecord>>> {
    Ok(Json(s.llm.store.tenants().await?))
}

#[utoipa::path(post, path = "/api/v1/tenants", request_body = TenantSpec,
    responses((status = 201, body = TenantRecord), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(spec): Body<TenantSpec>,
) -> ApiResult<(StatusCode, Json<TenantRecord>)> {
    let tenant = s.llm.store.create_tenant(&actor(&headers), &spec).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = TenantRecord), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    Ok(Json(s.llm.store.tenant(&id).await?))
}

#[utoipa::path(patch, path = "/api/v1/tenants/{id}", params(("id" = String, Path, description = "id or name")),
    request_body(content = Object, description = "Any fields of TenantSpec; null clears optional ones"),
    responses((status = 200, body = TenantRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch_tenant(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(patch): Body<Value>,
) -> ApiResult<Json<TenantRecord>> {
    let current = s.llm.store.tenant(&id).await?;
    let spec: TenantSpec = merge(&current.spec, patch)?;
    let updated = s
        .llm
        .store
        .update_tenant(&actor(&headers), &current.id, &spec)
        .await?;
    let hashes = s.llm.store.key_hashes_of_tenant(&current.id).await?;
    s.llm.changed(&hashes).await;
    Ok(Json(updated))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{id}", params(("id" = String, Path, description = "id or name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_tenant(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let current = s.llm.store.tenant(&id).await?;
    let hashes = s.llm.store.key_hashes_of_tenant(&current.id).await?;
    s.llm
        .store
        .delete_tenant(&actor(&headers), &current.id)
        .await?;
    s.llm.changed(&hashes).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- keys ------------------------------------------------------------------

/// An API key as the API shows it: never its secret or hash.
#[derive(Serialize, ToSchema)]
struct KeyView {
    id: String,
    tenant_id: String,
    prefix: String,
    #[serde(flatten)]
    spec: KeySpec,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            spec: KeySpec::of(&k),
            id: k.id,
            tenant_id: k.tenant_id,
            prefix: k.prefix,
        }
    }
}

/// A key with its secret, returned once, at creation or rotation.
#[derive(Serialize, ToSchema)]
struct KeyWithSecret {
    key: KeyView,
    /// Shown only now; store it safely.
    secret: String,
}

fn fresh_secret(s: &ApiState) -> ApiResult<(String, String, String)> {
    let secret = new_secret()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let hash = s.llm.resolver.hasher().hash(&secret);
    Ok((display_prefix(&secret), hash, secret))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}/keys", params(("id" = String, Path, description = "tenant id or name")),
    responses((status = 200, body = Vec<KeyView>), (status = 404, body = ErrorBody)))]
async fn list_keys(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<KeyView>>> {
    let tenant = s.llm.store.tenant(&id).await?;
    let keys = s.llm.store.keys_of_tenant(&tenant.id).await?;
    Ok(Json(keys.into_iter().map(KeyView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/tenants/{id}/keys", params(("id" = String, Path, description = "tenant id or name")),
    request_body = KeySpec,
    responses((status = 201, body = KeyWithSecret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(spec): Body<KeySpec>,
) -> ApiResult<(StatusCode, Json<KeyWithSecret>)> {
    let tenant = s.llm.store.tenant(&id).await?;
    let (prefix, hash, secret) = fresh_secret(&s)?;
    let key = s
        .llm
        .store
        .create_key(&actor(&headers), &tenant.id, &spec, &prefix, &hash)
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

#[utoipa::path(get, path = "/api/v1/keys/{id}", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn get_key(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    Ok(Json(s.llm.store.key(&id).await?.0.into()))
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", params(("id" = String, Path)),
    request_body(content = Object, description = "Any fields of KeySpec, e.g. {\"disabled\": true}"),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(patch): Body<Value>,
) -> ApiResult<Json<KeyView>> {
    let (current, hash) = s.llm.store.key(&id).await?;
    let spec: KeySpec = merge(&KeySpec::of(&current), patch)?;
    let key = s.llm.store.update_key(&actor(&headers), &id, &spec).await?;
    s.llm.changed(&[hash]).await;
    Ok(Json(key.into()))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (_, hash) = s.llm.store.key(&id).await?;
    s.llm.store.delete_key(&actor(&headers), &id).await?;
    s.llm.changed(&[hash]).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", params(("id" = String, Path)),
    responses((status = 200, body = KeyWithSecret), (status = 404, body = ErrorBody)))]
async fn rotate_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyWithSecret>> {
    let (_, old_hash) = s.llm.store.key(&id).await?;
    let (prefix, hash, secret) = fresh_secret(&s)?;
    let key = s
        .llm
        .store
        .rotate_key(&actor(&headers), &id, &prefix, &hash)
        .await?;
    s.llm.changed(&[old_hash, hash]).await;
    Ok(Json(KeyWithSecret {
        key: key.into(),
        secret,
    }))
}

// ---- models ----------------------------------------------------------------

/// A model as the API shows it: the upstream key only as "set or not".
#[derive(Serialize, ToSchema)]
struct ModelView {
    #[serde(flatten)]
    spec: ModelSpec,
    upstream_key_set: bool,
}

impl From<Model> for ModelView {
    fn from(m: Model) -> Self {
        Self {
            upstream_key_set: m.upstream_key.is_some(),
            spec: ModelSpec::of(&m),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/models", responses((status = 200, body = Vec<ModelView>)))]
async fn list_models(State(s): State<ApiState>) -> ApiResult<Json<Vec<ModelView>>> {
    Ok(Json(
        s.llm
            .store
            .models()
            .await?
            .into_iter()
            .map(ModelView::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/models", request_body = ModelSpec,
    responses((status = 201, body = ModelView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_model(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(mut spec): Body<ModelSpec>,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    if spec.upstream_model.is_empty() {
        spec.upstream_model = spec.name.clone();
    }
    let model = s.llm.store.put_model(&actor(&headers), &spec, true).await?;
    s.llm.changed(&[]).await;
    Ok((StatusCode::CREATED, Json(model.into())))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
async fn get_model(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ModelView>> {
    Ok(Json(s.llm.store.model(&name).await?.into()))
}

#[utoipa::path(patch, path = "/api/v1/models/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "Any fields of ModelSpec but name"),
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch_model(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(patch): Body<Value>,
) -> ApiResult<Json<ModelView>> {
    let current = s.llm.store.model(&name).await?;
    if patch.get("name").is_some_and(|n| n != &json!(name)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name: cannot be changed; create a new model",
        ));
    }
    let upstream_key = patch.get("upstream_key").cloned();
    let mut spec: ModelSpec = merge(&ModelSpec::of(&current), patch)?;
    spec.upstream_key = match upstream_key {
        Some(Value::String(k)) => Some(k),
        Some(Value::Null) => Some(String::new()),
        _ => None,
    };
    let model = s
        .llm
        .store
        .put_model(&actor(&headers), &spec, false)
        .await?;
    s.llm.changed(&[]).await;
    Ok(Json(model.into()))
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_model(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.llm.store.delete_model(&actor(&headers), &name).await?;
    s.llm.changed(&[]).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit -----------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// `group`, `tenant`, `key`, `model` or `capacity`.
    entity_type: Option<String>,
    entity_id: Option<String>,
    /// Return rows with an id below this one (the previous page's last id).
    before: Option<i64>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)))]
async fn list_audit(
    State(s): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let rows = s
        .llm
        .store
        .audit_log(
            q.entity_type.as_deref(),
            q.entity_id.as_deref(),
            q.before,
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(rows))
}

// ---- budgets -------------------------------------------------------------

/// A scope's limits and where it stands now.
#[derive(Serialize, ToSchema)]
struct BudgetView {
    /// `t:<tenant id>` or `k:<key id>`.
    scope: String,
    #[schema(value_type = Object)]
    limits: obleth_filters::budget::Limits,
    #[schema(value_type = Object)]
    standing: obleth_filters::budget::Standing,
}

async fn budget_view(s: &ApiState, scope: obleth_filters::budget::Scope) -> ApiResult<BudgetView> {
    let standing = s
        .llm
        .budgets
        .standing(&scope, jiff::Timestamp::now().as_millisecond())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(BudgetView {
        scope: scope.id,
        limits: scope.limits,
        standing,
    })
}

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
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
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

#[utoipa::path(get, path = "/api/v1/tenants/{id}/budget", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn tenant_budget(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&id).await?.into();
    let scope = crate::llm::tenant_scope(&tenant, jiff::Timestamp::now());
    Ok(Json(budget_view(&s, scope).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants/{id}/budget/reset", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn reset_tenant_budget(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&id).await?.into();
    let scope = crate::llm::tenant_scope(&tenant, jiff::Timestamp::now());
    let id = tenant.id.clone();
    Ok(Json(reset(&s, &headers, scope, "tenant", &id).await?))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}/budget", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn key_budget(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let (key, _) = s.llm.store.key(&id).await?;
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&key.tenant_id).await?.into();
    let scope = crate::llm::key_scope(&key, &tenant, jiff::Timestamp::now());
    Ok(Json(budget_view(&s, scope).await?))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/budget/reset", params(("id" = String, Path)),
    responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn reset_key_budget(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<BudgetView>> {
    let (key, _) = s.llm.store.key(&id).await?;
    let tenant: obleth_filters::records::Tenant = s.llm.store.tenant(&key.tenant_id).await?.into();
    let scope = crate::llm::key_scope(&key, &tenant, jiff::Timestamp::now());
    Ok(Json(reset(&s, &headers, scope, "key", &id).await?))
}

// ---- admission -----------------------------------------------------------

/// The global ceiling and each model pool's load.
#[derive(Serialize, ToSchema)]
struct CapacityView {
    global_max_in_flight: u32,
    in_flight: u32,
    queued: usize,
    pools: Vec<PoolLoad>,
}

#[derive(Serialize, ToSchema)]
struct PoolLoad {
    pool: String,
    max_in_flight: u32,
    in_flight: u32,
    queued: usize,
}

/// Body of `PUT /capacity`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CapacityChange {
    global_max_in_flight: u32,
}

fn snapshot(s: &ApiState) -> ApiResult<obleth_filters::admission::Snapshot> {
    s.llm.scheduler.snapshot().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the scheduler is unavailable",
        )
    })
}

fn capacity_view(s: &ApiState) -> ApiResult<CapacityView> {
    let snap = snapshot(s)?;
    Ok(CapacityView {
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

#[utoipa::path(get, path = "/api/v1/capacity", responses((status = 200, body = CapacityView)))]
async fn get_capacity(State(s): State<ApiState>) -> ApiResult<Json<CapacityView>> {
    Ok(Json(capacity_view(&s)?))
}

/// Changes this process's global ceiling at once (waiters are let in when
/// it grows; when it shrinks, requests in flight finish undisturbed). The
/// value lasts until restart, where the configuration applies again.
#[utoipa::path(put, path = "/api/v1/capacity", request_body = CapacityChange,
    responses((status = 200, body = CapacityView), (status = 400, body = ErrorBody)))]
async fn put_capacity(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Body(change): Body<CapacityChange>,
) -> ApiResult<Json<CapacityView>> {
    if change.global_max_in_flight == 0 {
        return Err(StoreError::invalid("global_max_in_flight", "must be at least 1").into());
    }
    let before = s.llm.scheduler.global();
    s.llm
        .store
        .record(
            &actor(&headers),
            "capacity.update",
            "capacity",
            "global",
            &json!({ "global_max_in_flight_before": before, "global_max_in_flight": change.global_max_in_flight }),
        )
        .await?;
    s.llm.scheduler.set_global(change.global_max_in_flight);
    Ok(Json(capacity_view(&s)?))
}

#[utoipa::path(get, path = "/api/v1/fairshare",
    responses((status = 200, description = "Per pool: size, in flight, queued, and per group and tenant (`group/tenant id`) the weight, its share among active siblings, in flight, queued and tokens served since the pool was last idle", body = Object)))]
async fn fairshare(
    State(s): State<ApiState>,
) -> ApiResult<Json<obleth_filters::admission::Snapshot>> {
    Ok(Json(snapshot(&s)?))
}

// ---- usage ---------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
struct UsageQuery {
    /// Start of the range (RFC 3339); default 24 hours ago.
    from: Option<String>,
    /// End of the range, exclusive (RFC 3339); default now (this second
    /// included).
    to: Option<String>,
    /// `tenant` (default), `key` or `model`.
    group_by: Option<String>,
    /// Only this tenant (id or name).
    tenant: Option<String>,
}

/// Usage totals over a time range.
#[derive(Serialize, ToSchema)]
struct UsageView {
    from: String,
    to: String,
    group_by: String,
    #[schema(value_type = Vec<Object>)]
    rows: Vec<obleth_filters::telemetry::UsageTotals>,
}

fn clickhouse(s: &ApiState) -> ApiResult<&obleth_filters::telemetry::ClickHouseSink> {
    s.llm.telemetry.clickhouse.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "usage queries need ClickHouse (telemetry.clickhouse.url); records are kept in the write-ahead log at {}",
                s.llm.telemetry.wal.dir().display()
            ),
        )
    })
}

fn unavailable(e: obleth_filters::telemetry::SinkError) -> ApiError {
    tracing::warn!("admin API: {e}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ClickHouse is unavailable")
}

fn timestamp(
    field: &str,
    text: Option<&str>,
    default: jiff::Timestamp,
) -> ApiResult<jiff::Timestamp> {
    match text {
        None => Ok(default),
        Some(t) => t.parse().map_err(|e| {
            StoreError::invalid(field, format!("{t:?} is not an RFC 3339 time: {e}")).into()
        }),
    }
}

/// The tenant id for a tenant given by id or name.
async fn tenant_id(s: &ApiState, tenant: Option<&str>) -> ApiResult<Option<String>> {
    match tenant {
        None => Ok(None),
        Some(t) => Ok(Some(s.llm.store.tenant(t).await?.id)),
    }
}

#[utoipa::path(get, path = "/api/v1/usage", params(UsageQuery),
    responses((status = 200, body = UsageView), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn usage(
    State(s): State<ApiState>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageView>> {
    let ch = clickhouse(&s)?;
    // Times are stored in whole seconds: include the current one.
    let now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let to = timestamp("to", q.to.as_deref(), now)?;
    let from = timestamp(
        "from",
        q.from.as_deref(),
        to - jiff::SignedDuration::from_hours(24),
    )?;
    let group_by = q.group_by.unwrap_or_else(|| "tenant".into());
    if !["tenant", "key", "model"].contains(&group_by.as_str()) {
        return Err(StoreError::invalid("group_by", "must be tenant, key or model").into());
    }
    let tenant = tenant_id(&s, q.tenant.as_deref()).await?;
    let rows = ch
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

#[derive(Deserialize, IntoParams)]
struct RequestLogQuery {
    /// The tenant (id or name).
    tenant: String,
    /// 1 to 1000; default 100.
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/usage/requests", params(RequestLogQuery),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn usage_requests(
    State(s): State<ApiState>,
    Query(q): Query<RequestLogQuery>,
) -> ApiResult<Json<Vec<obleth_filters::telemetry::RequestRow>>> {
    let ch = clickhouse(&s)?;
    let tenant = s.llm.store.tenant(&q.tenant).await?.id;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(ch.recent(&tenant, limit).await.map_err(unavailable)?))
}
