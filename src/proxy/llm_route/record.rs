//! The `llm` route action in `logging`: settle the budget reservation, count
//! the request and append its usage record.

use std::time::{Duration, SystemTime};

use obleth_filters::telemetry::UsageRecord;

use super::RequestCtx;
use crate::llm::LlmState;
use crate::metrics::{status_class, FAMILIES};
use crate::proxy::errors::status_label;

/// The one LLM hook of `logging`, once the status the client saw is known.
pub async fn logging(llm: &LlmState, ctx: &mut RequestCtx, status: u16, elapsed: Duration) {
    if let Some(call) = ctx.llm.as_mut() {
        call.settle(llm).await;
    }
    let admission = ctx.llm.as_ref().map_or("rejected", |c| c.admission());
    FAMILIES
        .llm_requests
        .with_label_values(&[status_class(status), status_label(status), admission])
        .inc();
    record_usage(llm, ctx, status, admission, elapsed);
}

/// Appends the usage record of an LLM request whose key was resolved.
fn record_usage(llm: &LlmState, ctx: &RequestCtx, status: u16, admission: &str, elapsed: Duration) {
    let Some(caller) = &ctx.caller else {
        return;
    };
    let telemetry = &llm.telemetry;
    let charged = ctx.llm.as_ref().and_then(|c| c.charged).unwrap_or_default();
    let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
    let arrived = SystemTime::now()
        .checked_sub(elapsed)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    telemetry.record(UsageRecord {
        request_id: ctx.request_id.as_str().to_owned(),
        record_id: format!("{:032x}", rand::random::<u128>()),
        time_ms: arrived
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
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
    });
}
