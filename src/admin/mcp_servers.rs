//! `/api/v1/mcp-servers`: the MCP servers behind `/mcp/{server}`. The
//! credential obleth injects (`auth_header`) is write-only: responses and
//! the audit log say only whether one is set.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{merge, views, ApiState, Change};
use super::error::{ApiError, ApiJson, ApiResult, Body, ErrorBody, Path};
use crate::store::{McpServer, McpServerSpec, McpTransport};

/// The routes of this file, for [`super::api::router`].
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_mcp_servers, create_mcp_server))
        .routes(routes!(get_mcp_server, patch_mcp_server, delete_mcp_server))
}

/// An MCP server as the API shows it: the credential only as "set or not".
#[derive(Serialize, ToSchema)]
pub struct McpServerView {
    name: String,
    url: String,
    transport: McpTransport,
    /// Whether an `auth_header` is stored (it is never shown).
    auth_header_set: bool,
    enabled: bool,
    allowed_tools: Vec<String>,
    max_in_flight: Option<u32>,
}

impl From<McpServer> for McpServerView {
    fn from(m: McpServer) -> Self {
        let s = m.spec;
        Self {
            auth_header_set: s.auth_header.is_some(),
            name: s.name,
            url: s.url,
            transport: s.transport,
            enabled: s.enabled,
            allowed_tools: s.allowed_tools,
            max_in_flight: s.max_in_flight,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/mcp-servers", tag = "mcp-servers",
    responses((status = 200, body = Vec<McpServerView>)))]
async fn list_mcp_servers(State(s): State<ApiState>) -> ApiJson<Vec<McpServerView>> {
    Ok(views(s.llm.store.mcp_servers().await?))
}

#[utoipa::path(post, path = "/api/v1/mcp-servers", tag = "mcp-servers", request_body = McpServerSpec,
    responses((status = 201, body = McpServerView), (status = 400, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create_mcp_server(
    Change(s, actor): Change,
    Body(spec): Body<McpServerSpec>,
) -> ApiResult<(StatusCode, Json<McpServerView>)> {
    let server = s.llm.store.put_mcp_server(&actor, &spec, true).await?;
    s.llm.changed(&[]).await;
    Ok((StatusCode::CREATED, Json(server.into())))
}

#[utoipa::path(get, path = "/api/v1/mcp-servers/{name}", tag = "mcp-servers", params(("name" = String, Path)),
    responses((status = 200, body = McpServerView), (status = 404, body = ErrorBody)))]
async fn get_mcp_server(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiJson<McpServerView> {
    Ok(Json(s.llm.store.mcp_server(&name).await?.into()))
}

/// A JSON merge patch of the server; `name` may only repeat its own, and
/// `auth_header: null` (or `""`) clears the credential.
#[utoipa::path(patch, path = "/api/v1/mcp-servers/{name}", tag = "mcp-servers", params(("name" = String, Path)),
    request_body(content = Object, description = "Any fields of McpServerSpec but name"),
    responses((status = 200, body = McpServerView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch_mcp_server(
    Change(s, actor): Change,
    Path(name): Path<String>,
    Body(patch): Body<Value>,
) -> ApiJson<McpServerView> {
    let current = s.llm.store.mcp_server(&name).await?;
    if patch.get("name").is_some_and(|n| n != &json!(name)) {
        return Err(ApiError::invalid(
            "name",
            "cannot be changed; create a new MCP server",
        ));
    }
    let auth_header = patch.get("auth_header").cloned();
    let mut spec: McpServerSpec = merge(&McpServerSpec::of(&current), patch)?;
    spec.auth_header = match auth_header {
        Some(Value::String(h)) => Some(h),
        Some(Value::Null) => Some(String::new()),
        _ => None,
    };
    let server = s.llm.store.put_mcp_server(&actor, &spec, false).await?;
    s.llm.changed(&[]).await;
    Ok(Json(server.into()))
}

#[utoipa::path(delete, path = "/api/v1/mcp-servers/{name}", tag = "mcp-servers", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_mcp_server(
    Change(s, actor): Change,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.llm.store.delete_mcp_server(&actor, &name).await?;
    s.llm.changed(&[]).await;
    Ok(StatusCode::NO_CONTENT)
}
