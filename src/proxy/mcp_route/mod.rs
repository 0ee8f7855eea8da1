//! `/mcp/{server}` on an `llm` route: MCP's streamable HTTP transport
//! through obleth. In `request_filter`: the key (as on every LLM request),
//! the server (registered, enabled, granted to the tenant), the session
//! (bound to the key that opened it), the POSTed JSON-RPC messages and the
//! tool policy, and the server's admission pool; later the credential swap
//! (`call.rs`), the `tools/list` filter (`tools_list.rs`) and one usage
//! record per message (`record.rs`).

mod call;
mod messages;
mod record;
mod tools_list;

use http::header::HeaderValue;
use obleth_filters::admission::Ticket;
use obleth_filters::records::Principal;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::llm_route::{authenticate, conclude, read_body, Rejection, Stop};
use super::preset_body::PresetBody;
use super::{respond, RequestCtx};
use crate::config::LlmAction;
use crate::llm::{LlmState, McpEndpoint};

pub use call::McpCall;
use call::SESSION_HEADER;
use messages::Posted;
pub use record::logging;

/// The `{server}` of a `/mcp/{server}` path (a trailing `/` allowed).
pub fn server_in_path(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/mcp/")?;
    let name = name.strip_suffix('/').unwrap_or(name);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Runs the MCP gates; `Ok(true)` when a response was already sent.
pub async fn request_filter(
    llm: &LlmState,
    server: &str,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    ctx.mcp = Some(Box::new(McpCall::new(server)));
    let admitted = admit(llm, server, action, session, ctx).await;
    conclude(admitted, session, ctx).await
}

async fn admit(
    llm: &LlmState,
    server: &str,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool, Stop> {
    let principal = authenticate(llm, session, ctx).await?;
    if llm.telemetry.refusing() {
        return Err(Rejection::new(
            503,
            "usage_log_full",
            "usage cannot be recorded right now; retry later",
        )
        .into());
    }
    let endpoint = llm.mcp.lookup(server).ok_or_else(|| {
        Rejection::new(
            404,
            "mcp_server_not_found",
            format!("no MCP server is named `{server}`"),
        )
    })?;
    if let Some(call) = ctx.mcp.as_mut() {
        call.endpoint = Some(endpoint.clone());
    }

    let method = session.req_header().method.clone();
    let (body, held) = match method {
        http::Method::POST => {
            let (body, held) = read_body(session, ctx, action.max_body, &llm.body_buffer).await?;
            let posted = Posted::parse(&body)?;
            if let Some(call) = ctx.mcp.as_mut() {
                call.posted = Some(posted);
            }
            (Some(body), held)
        }
        http::Method::GET | http::Method::DELETE => (None, Default::default()),
        other => {
            return Err(Rejection::new(
                405,
                "method_not_allowed",
                format!("MCP's streamable HTTP transport has no {other}; use POST, GET or DELETE"),
            )
            .into())
        }
    };
    if !endpoint.enabled {
        return Err(Rejection::new(
            403,
            "mcp_server_disabled",
            format!("the MCP server `{server}` is disabled"),
        )
        .into());
    }
    if !principal.tenant.allows_mcp_server(server) {
        return Err(Rejection::new(
            403,
            "mcp_server_not_allowed",
            format!("this key may not use the MCP server `{server}`"),
        )
        .into());
    }
    let presented = session
        .req_header()
        .headers
        .get(SESSION_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(id) = &presented {
        // Another key's session is as unknown as an expired one: MCP has
        // the client open a new session after a 404.
        if llm.mcp_sessions.owner(id).await.as_deref() != Some(principal.key.id.as_str()) {
            return Err(Rejection::new(
                404,
                "session_not_found",
                "no MCP session with this id belongs to this key; initialize a new one",
            )
            .into());
        }
    }
    if refuse_tools(ctx, &endpoint, &principal) {
        let answer = ctx
            .mcp
            .as_ref()
            .and_then(|c| c.posted.as_ref())
            .map(Posted::refusal);
        let json = HeaderValue::from_static("application/json");
        let body = bytes::Bytes::from(answer.unwrap_or_default().to_string());
        respond(session, 200, &json, body, &ctx.request_id, None)
            .await
            .map_err(|_| Stop::ClientGone)?;
        return Ok(true);
    }
    let Some(direct) = &endpoint.upstream else {
        return Err(Rejection::new(
            503,
            "mcp_server_unavailable",
            format!("the MCP server `{server}` has a URL that cannot be reached"),
        )
        .into());
    };
    let permit = match &endpoint.admission {
        Some((pool, _)) => Some(
            llm.scheduler
                .admit(Ticket {
                    pool: pool.clone(),
                    group: principal.tenant.group.clone(),
                    group_weight: principal.tenant.group_weight,
                    tenant: principal.tenant.id.clone(),
                    tenant_weight: principal.tenant.weight,
                    tenant_max_in_flight: principal.tenant.max_in_flight,
                    key: principal.key.id.clone(),
                    key_weight: principal.key.weight,
                    key_max_in_flight: principal.key.max_in_flight,
                    estimated_tokens: 1,
                })
                .await?,
        ),
        None => None,
    };
    if let Some(body) = &body {
        if session.as_ref().retry_buffer_truncated() {
            PresetBody::install(session, body.clone());
        }
    }
    ctx.pool = Some(direct.pool.clone());
    if let Some(call) = ctx.mcp.as_mut() {
        call.body = body;
        call._held = held;
        call.permit = permit;
        call.session = presented;
    }
    record::log_intents(llm, ctx, &method);
    Ok(false)
}

/// Marks the `tools/call`s the tenant (or the server's allowlist) does not
/// allow; whether there was one.
fn refuse_tools(ctx: &mut RequestCtx, endpoint: &McpEndpoint, principal: &Principal) -> bool {
    let Some(call) = ctx.mcp.as_mut() else {
        return false;
    };
    let Some(posted) = call.posted.as_mut() else {
        return false;
    };
    for message in &mut posted.messages {
        if let Some(tool) = &message.tool {
            message.refused =
                !(endpoint.offers(tool) && principal.tenant.allows_mcp_tool(&endpoint.name, tool));
        }
    }
    call.refused = posted.messages.iter().any(|m| m.refused);
    call.refused
}

#[cfg(test)]
mod tests {
    use super::server_in_path;

    #[test]
    fn the_server_is_the_one_segment_after_mcp() {
        assert_eq!(server_in_path("/mcp/search"), Some("search"));
        assert_eq!(server_in_path("/mcp/search/"), Some("search"));
        for path in ["/mcp/", "/mcp", "/mcp/a/b", "/v1/mcp/a"] {
            assert_eq!(server_in_path(path), None, "{path}");
        }
    }
}
