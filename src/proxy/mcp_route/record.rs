//! The usage of an MCP request, in `logging`: one record per JSON-RPC
//! message (one for a GET or DELETE, or a request refused before its body
//! was read), on the same write-ahead log as LLM usage, and the
//! `obleth_mcp_requests_total` counter.

use std::time::Duration;

use obleth_filters::telemetry::{McpUsage, Outcome, UsageRecord};

use super::super::llm_route::{arrival_ms, ms, record_id};
use super::RequestCtx;
use crate::llm::LlmState;
use crate::metrics::{status_class, FAMILIES};

/// The MCP hook of `logging`, once the status the client saw is known.
pub fn logging(
    llm: &LlmState,
    ctx: &RequestCtx,
    method: &http::Method,
    status: u16,
    elapsed: Duration,
) {
    let Some(call) = ctx.mcp.as_ref() else {
        return;
    };
    // A refused tool call is answered 200 (a JSON-RPC error), yet it was
    // refused by policy: its records say 403.
    let status = if call.refused { 403 } else { status };
    let messages: Vec<(String, Option<String>)> = match &call.posted {
        Some(posted) => posted
            .messages
            .iter()
            .map(|m| (m.method.clone(), m.tool.clone()))
            .collect(),
        None => vec![(format!("http:{method}"), None)],
    };
    FAMILIES
        .mcp_requests
        .with_label_values(&[call.server_label(), status_class(status)])
        .inc_by(messages.len() as u64);
    let Some(caller) = &ctx.caller else {
        return;
    };
    let route = ctx.route.as_ref().map_or("", |r| r.name()).to_string();
    let upstream = ctx
        .server
        .as_ref()
        .map_or(String::new(), |s| s.server().config.name.clone());
    for (method, tool) in messages {
        llm.telemetry.record(UsageRecord {
            request_id: ctx.request_id.as_str().to_owned(),
            record_id: record_id(),
            time_ms: arrival_ms(elapsed),
            tenant: caller.tenant.id.clone(),
            key: caller.key.id.clone(),
            model: format!("mcp:{}", call.server),
            route: route.clone(),
            admission: call.admission().to_string(),
            queue_wait_ms: ms(call.queue_wait()),
            ttfb_ms: ctx.first_byte.map_or(0, ms),
            total_ms: ms(elapsed),
            status,
            input_tokens: 0,
            output_tokens: 0,
            estimated: false,
            cost_usd: 0.0,
            upstream: upstream.clone(),
            replica: llm.telemetry.replica.clone(),
            outcome: Outcome::Completed,
            mcp: Some(McpUsage {
                server: call.server.clone(),
                method,
                tool: tool.unwrap_or_default(),
            }),
        });
    }
}
