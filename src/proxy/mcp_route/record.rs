//! The usage of an MCP request: one record per JSON-RPC message (one for a
//! GET or DELETE, or a request refused before its body was read), on the
//! same write-ahead log as LLM usage. A request that goes upstream leaves
//! an intent per message first, which its completion record supersedes
//! (a crash in between leaves a `crashed` row, as for LLM requests);
//! `logging` writes the completions and counts `obleth_mcp_requests_total`.

use http::Method;
use obleth_filters::records::Principal;
use obleth_filters::telemetry::{McpUsage, Outcome, UsageRecord};

use super::super::llm_route::{arrival_ms, ms, record_id};
use super::{McpCall, RequestCtx};
use crate::llm::LlmState;
use crate::metrics::{status_class, FAMILIES};

/// One metered entry of a request: its method and tool.
type Entry = (String, Option<String>);

impl McpCall {
    /// What the request is metered as, one entry per message.
    fn entries(&self, method: &Method) -> Vec<Entry> {
        match &self.posted {
            Some(posted) => posted
                .messages
                .iter()
                .map(|m| (m.method.clone(), m.tool.clone()))
                .collect(),
            None => vec![(format!("http:{method}"), None)],
        }
    }
}

/// The record of one entry: an intent (status 0, no times yet) or the
/// completion once `status` is known.
fn usage(
    llm: &LlmState,
    ctx: &RequestCtx,
    call: &McpCall,
    caller: &Principal,
    (method, tool): Entry,
    record_id: String,
    completion: Option<u16>,
) -> UsageRecord {
    let elapsed = ctx.started.elapsed();
    UsageRecord {
        request_id: ctx.request_id.as_str().to_owned(),
        record_id,
        time_ms: arrival_ms(elapsed),
        tenant: caller.tenant.id.clone(),
        key: caller.key.id.clone(),
        model: format!("mcp:{}", call.server),
        route: ctx.route.as_ref().map_or("", |r| r.name()).to_string(),
        admission: call.admission().to_string(),
        queue_wait_ms: ms(call.queue_wait()),
        ttfb_ms: completion.and(ctx.first_byte).map_or(0, ms),
        total_ms: completion.map_or(0, |_| ms(elapsed)),
        status: completion.unwrap_or(0),
        input_tokens: 0,
        output_tokens: 0,
        estimated: false,
        cost_usd: 0.0,
        upstream: ctx
            .server
            .as_ref()
            .map_or(String::new(), |s| s.server().config.name.clone()),
        replica: llm.telemetry.replica.clone(),
        outcome: match completion {
            Some(_) => Outcome::Completed,
            None => Outcome::Intent,
        },
        mcp: Some(McpUsage {
            server: call.server.clone(),
            method,
            tool: tool.unwrap_or_default(),
        }),
    }
}

/// Appends the intents of a request about to go upstream.
pub(super) fn log_intents(llm: &LlmState, ctx: &mut RequestCtx, method: &Method) {
    let (Some(call), Some(caller)) = (ctx.mcp.as_deref(), ctx.caller.as_deref()) else {
        return;
    };
    let mut ids = Vec::new();
    let mut intents = Vec::new();
    for entry in call.entries(method) {
        let id = record_id();
        let intent = usage(llm, ctx, call, caller, entry, id.clone(), None);
        intents.extend(llm.telemetry.wal.append_durable(intent).ok());
        ids.push(id);
    }
    if let Some(call) = ctx.mcp.as_mut() {
        call.record_ids = ids;
        call.intents = intents;
    }
}

/// The MCP hook of `logging`, once the status the client saw is known.
pub fn logging(llm: &LlmState, ctx: &RequestCtx, method: &Method, status: u16) {
    let Some(call) = ctx.mcp.as_deref() else {
        return;
    };
    // A refused tool call is answered 200 (a JSON-RPC error), yet it was
    // refused by policy: its records say 403.
    let status = if call.refused { 403 } else { status };
    let entries = call.entries(method);
    FAMILIES
        .mcp_requests
        .with_label_values(&[call.server_label(), status_class(status)])
        .inc_by(entries.len() as u64);
    let Some(caller) = ctx.caller.as_deref() else {
        return;
    };
    for (i, entry) in entries.into_iter().enumerate() {
        // The intent's id, which this record supersedes.
        let id = call.record_ids.get(i).cloned().unwrap_or_else(record_id);
        llm.telemetry
            .record(usage(llm, ctx, call, caller, entry, id, Some(status)));
    }
}
