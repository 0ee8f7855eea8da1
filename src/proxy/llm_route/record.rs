//! The usage records of an LLM request: its intent, appended when it is
//! admitted, and, in `logging`, its settlement and completion record.

use std::time::{Duration, SystemTime};

use obleth_filters::openai::LlmRequest;
use obleth_filters::records::Principal;
use obleth_filters::telemetry::{Durable, Outcome, UsageRecord};

use super::budget::usd_micros;
use super::RequestCtx;
use crate::llm::CatalogModel;
use crate::llm::LlmState;
use crate::metrics::{status_class, FAMILIES};
use crate::proxy::errors::status_label;

/// The one LLM hook of `logging`, once the status the client saw is known.
pub async fn logging(llm: &LlmState, ctx: &mut RequestCtx, status: u16, elapsed: Duration) {
    if let Some(call) = ctx.llm.as_mut() {
        call.settle(llm).await;
        if let Some(first) = call.first_token {
            call.model
                .time_to_first_token
                .observe(first.duration_since(ctx.started).as_secs_f64());
        }
    }
    let admission = ctx.llm.as_ref().map_or("rejected", |c| c.admission());
    FAMILIES
        .llm_requests
        .with_label_values(&[status_class(status), status_label(status), admission])
        .inc();
    record_usage(llm, ctx, status, admission, elapsed);
}

pub(in crate::proxy) fn ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Unix milliseconds of the request's arrival, `elapsed` ago.
pub(in crate::proxy) fn arrival_ms(elapsed: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(elapsed)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh record id: what tells one record from another in ClickHouse.
pub(in crate::proxy) fn record_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Appends the intent of a request about to go upstream: the record a
/// crash turns into a `crashed` row, at what was reserved for it.
pub(super) fn log_intent(
    llm: &LlmState,
    ctx: &RequestCtx,
    record_id: &str,
    principal: &Principal,
    model: &CatalogModel,
    request: &LlmRequest,
    admission: &str,
) -> Option<Durable> {
    let prompt = request.prompt_bound();
    let completion = request.completion_bound(llm.budget_settings.default_max_tokens);
    let intent = UsageRecord {
        request_id: ctx.request_id.as_str().to_owned(),
        record_id: record_id.to_owned(),
        time_ms: arrival_ms(ctx.started.elapsed()),
        tenant: principal.tenant.id.clone(),
        key: principal.key.id.clone(),
        model: model.model.name.clone(),
        route: ctx.route.as_ref().map_or("", |r| r.name()).to_string(),
        admission: admission.to_string(),
        queue_wait_ms: 0,
        ttfb_ms: 0,
        total_ms: 0,
        status: 0,
        input_tokens: prompt,
        output_tokens: completion,
        estimated: true,
        cost_usd: usd_micros(model, prompt, completion, true) as f64 / 1e6,
        upstream: String::new(),
        replica: llm.telemetry.replica.clone(),
        outcome: Outcome::Intent,
        mcp: None,
    };
    llm.telemetry.wal.append_durable(intent).ok()
}

/// Appends the usage record of an LLM request whose key was resolved.
fn record_usage(llm: &LlmState, ctx: &RequestCtx, status: u16, admission: &str, elapsed: Duration) {
    let Some(caller) = &ctx.caller else {
        return;
    };
    let telemetry = &llm.telemetry;
    let charged = ctx.llm.as_ref().and_then(|c| c.charged).unwrap_or_default();
    telemetry.record(UsageRecord {
        request_id: ctx.request_id.as_str().to_owned(),
        // The intent's id, which this record supersedes.
        record_id: ctx
            .llm
            .as_ref()
            .map_or_else(record_id, |c| c.record_id.clone()),
        time_ms: arrival_ms(elapsed),
        tenant: caller.tenant.id.clone(),
        key: caller.key.id.clone(),
        model: ctx.model.clone().unwrap_or_default(),
        route: ctx.route.as_ref().map_or("", |r| r.name()).to_string(),
        admission: admission.to_string(),
        queue_wait_ms: ctx.llm.as_ref().map_or(0, |c| ms(c.queue_wait())),
        ttfb_ms: ctx.first_byte.map_or(0, ms),
        total_ms: ms(elapsed),
        status,
        input_tokens: charged.input_tokens,
        output_tokens: charged.output_tokens,
        estimated: charged.estimated,
        cost_usd: charged.cost_usd,
        upstream: ctx
            .server
            .as_ref()
            .map_or(String::new(), |s| s.server().config.name.clone()),
        replica: telemetry.replica.clone(),
        outcome: Outcome::Completed,
        mcp: None,
    });
}
