//! The `llm` route action in `request_filter`: authenticate the key, read
//! and check the body, pick the model's pool, and later rewrite the request
//! (model name, credential, path) on its way upstream.

mod budget;
mod call;
mod record;
mod rejection;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use obleth_filters::access;
use obleth_filters::admission::{Admission, Permit, Ticket};
use obleth_filters::auth::{credential, AuthError};
use obleth_filters::openai::{Endpoint, LlmRequest};
use obleth_filters::records::Principal;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::json;

use super::preset_body::PresetBody;
use super::{respond, Generation, RequestCtx};
use crate::config::LlmAction;
use crate::llm::{BodyBuffer, CatalogModel, HeldBytes, LlmState};
use crate::metrics::FAMILIES;
use crate::otel::otlp::KeyValue;

use budget::reserve;
pub use call::LlmCall;
pub use record::logging;
pub(super) use record::{arrival_ms, ms, record_id};
pub(super) use rejection::{conclude, Rejection, Stop};

/// Runs the LLM gates; `Ok(true)` when a response was already sent.
pub async fn request_filter(
    llm: &LlmState,
    generation: &Generation,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let admitted = admit(llm, generation, action, session, ctx).await;
    conclude(admitted, session, ctx).await
}

async fn admit(
    llm: &LlmState,
    generation: &Generation,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool, Stop> {
    let req = session.req_header();
    let endpoint =
        Endpoint::from_request(req.method.as_str(), req.uri.path()).ok_or_else(|| {
            Rejection::new(
                404,
                "unknown_url",
                format!("unknown endpoint: {} {}", req.method, req.uri.path()),
            )
        })?;

    let principal = authenticate(llm, session, ctx).await?;

    let catalog_request = matches!(endpoint, Endpoint::Models | Endpoint::Model);
    if !catalog_request && llm.telemetry.refusing() {
        return Err(Rejection::new(
            503,
            "usage_log_full",
            "usage cannot be recorded right now; retry later",
        )
        .into());
    }
    if catalog_request {
        let one = Endpoint::model_id(session.req_header().uri.path()).map(str::to_owned);
        let body = match one {
            Some(id) => one_model(llm, &principal, &id)?,
            None => list_models(llm, &principal),
        };
        let content_type = HeaderValue::from_static("application/json");
        respond(session, 200, &content_type, body, &ctx.request_id, None)
            .await
            .map_err(|_| Stop::ClientGone)?;
        return Ok(true);
    }

    let (body, held) = read_body(session, ctx, action.max_body, &llm.body_buffer).await?;
    let content_type = session
        .req_header()
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut request = LlmRequest::parse_as(body, content_type)?;
    let model = llm.catalog.lookup(&request.model).ok_or_else(|| {
        Rejection::new(
            404,
            "model_not_found",
            format!("The model `{}` does not exist", request.model),
        )
    })?;
    ctx.model = Some(model.model.name.clone());
    let tenant = &principal.tenant;
    // The allowlist names canonical models: an alias reaches what its model
    // allows, never more.
    if !tenant.allows_model(&model.model.name) {
        return Err(Rejection::new(
            403,
            "model_not_allowed",
            format!("this key may not use the model `{}`", request.model),
        )
        .into());
    }
    let pool = match &model.direct {
        Some(direct) => Some(direct.pool.clone()),
        None => model
            .model
            .pool
            .as_deref()
            .and_then(|name| generation.pool(name))
            .cloned(),
    };
    let Some(pool) = pool else {
        return Err(Rejection::new(
            503,
            "model_unavailable",
            format!("no pool serves the model `{}`", model.model.name),
        )
        .into());
    };
    let started = ctx.step_started();
    let permit = wait_for_slot(llm, session, &principal, &model, &request).await?;
    ctx.trace_step("admission", started, || {
        vec![
            KeyValue::text("obleth.admission", permit.admission().label()),
            KeyValue::text("obleth.pool", model.model.name.as_str()),
        ]
    });
    // Brownout lowers the output of generating endpoints only.
    let output_field = match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions => Some("max_tokens"),
        Endpoint::Responses => Some("max_output_tokens"),
        _ => None,
    };
    let brownout_cap = output_field
        .filter(|_| permit.admission() == Admission::Brownout)
        .map(|field| (field, llm.admission.brownout_max_tokens));
    if let Some((field, cap)) = brownout_cap {
        request.cap_max_tokens(cap, field);
    }
    let brownout_cap = brownout_cap.map(|(_, cap)| cap);
    let started = ctx.step_started();
    let reserved = reserve(llm, &principal, &model, &request).await;
    ctx.trace_step("budget", started, || {
        vec![KeyValue::flag("obleth.budget.reserved", reserved.is_ok())]
    });
    let hold = match reserved {
        Ok(hold) => hold,
        Err(refused) => {
            // Nothing will be served: take the estimate back out of the
            // fair-share accounts.
            permit.correct(0);
            return Err(refused.into());
        }
    };
    // A stream that did not ask for usage gets it anyway (for settlement);
    // the extra event is removed again on the way back.
    // (The Responses API always reports usage in its last event.)
    let strip_usage = request.stream
        && !request.asks_for_usage()
        && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions);
    let record_id = record::record_id();
    let intent = record::log_intent(
        llm,
        ctx,
        &record_id,
        &principal,
        &model,
        &request,
        permit.admission().label(),
    );
    let body = request.into_upstream(&model.model.upstream_model, strip_usage);
    // Asked without `get_retry_buffer`, which copies the buffer.
    if session.as_ref().retry_buffer_truncated() {
        // Larger than Pingora's retry buffer: replay it from here.
        PresetBody::install(session, body.clone());
    }
    ctx.pool = Some(pool);
    ctx.llm = Some(Box::new(LlmCall {
        body,
        _held: held,
        principal,
        model,
        endpoint,
        body_sent: false,
        hold,
        strip_usage,
        meter: None,
        response_bytes: 0,
        upstream_status: None,
        permit,
        brownout_cap,
        charged: None,
        record_id,
        intent,
        first_token: None,
    }));
    Ok(false)
}

/// Resolves the request's one API key (`Authorization` or `x-api-key`) to
/// its principal and checks that the key and its tenant may be served now:
/// the gate every LLM and MCP request passes first.
pub(super) async fn authenticate(
    llm: &LlmState,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Arc<Principal>, Stop> {
    let req = session.req_header();
    for name in [header::AUTHORIZATION.as_str(), "x-api-key"] {
        if req.headers.get_all(name).iter().nth(1).is_some() {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("more than one {name} header; send one credential"),
            )
            .into());
        }
    }
    let secret = credential(
        req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        req.headers.get("x-api-key").map(|v| v.as_bytes()),
    )
    .ok_or(AuthError::Missing)?
    .to_owned();
    let started = ctx.step_started();
    let principal = llm.resolver.resolve(&secret).await?;
    ctx.trace_step("auth", started, || {
        vec![KeyValue::text(
            "obleth.tenant.id",
            principal.tenant.id.as_str(),
        )]
    });
    ctx.caller = Some(principal.clone());
    access::check(&principal, jiff::Timestamp::now())?;
    Ok(principal)
}

/// The most tokens one request counts for at admission (before settlement
/// puts in the actual tokens).
const MAX_ESTIMATE: u64 = 1 << 24;

/// Waits for the model pool's admission slot in fair order, leaving the
/// queue as soon as the client goes away.
async fn wait_for_slot(
    llm: &LlmState,
    session: &mut Session,
    principal: &Principal,
    model: &CatalogModel,
    request: &LlmRequest,
) -> Result<Permit, Stop> {
    let (tenant, key) = (&principal.tenant, &principal.key);
    let completion_bound = request.completion_bound(llm.budget_settings.default_max_tokens);
    let ticket = Ticket {
        pool: model.model.name.clone(),
        group: tenant.group.clone(),
        group_weight: tenant.group_weight,
        tenant: tenant.id.clone(),
        tenant_weight: tenant.weight.saturating_mul(model.model.admission_weight),
        tenant_max_in_flight: tenant.max_in_flight,
        key: key.id.clone(),
        key_weight: key.weight,
        key_max_in_flight: key.max_in_flight,
        // Bytes over-count tokens about fourfold; settlement corrects it.
        // Bounded, so one absurd max_tokens cannot swamp the accounts.
        estimated_tokens: (request.prompt_bound().div_ceil(4))
            .saturating_add(completion_bound)
            .min(MAX_ESTIMATE),
    };
    let started = std::time::Instant::now();
    let admit = llm.scheduler.admit(ticket);
    tokio::pin!(admit);
    let admitted = tokio::select! {
        biased;
        admitted = &mut admit => admitted,
        idle = session.downstream_session.read_body_or_idle(true) => match idle {
            Err(e) if matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError) => {
                return Err(Stop::ClientGone);
            }
            // Stray bytes after the body: keep waiting, unwatched.
            _ => admit.await,
        },
    };
    match admitted {
        Ok(permit) => {
            FAMILIES
                .queue_wait
                .with_label_values(&[permit.admission().label()])
                .observe(permit.waited().as_secs_f64());
            Ok(permit)
        }
        Err(refusal) => {
            FAMILIES
                .queue_wait
                .with_label_values(&["rejected"])
                .observe(started.elapsed().as_secs_f64());
            Err(refusal.into())
        }
    }
}

/// How long a body whose length is declared may wait for room in the
/// process-wide buffer before it is refused.
const BUFFER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the whole body, bounded by `max` and by the process-wide buffer:
/// a declared length is refused or held before a byte is read, a chunked
/// body as soon as it passes either bound.
pub(super) async fn read_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    max: usize,
    buffer: &BodyBuffer,
) -> Result<(Bytes, HeldBytes), Rejection> {
    let too_large = || {
        Rejection::new(
            413,
            "request_too_large",
            format!("request body larger than {max} bytes"),
        )
    };
    let full = |e: crate::llm::BufferFull| {
        Rejection::new(503, "body_buffer_full", format!("{e}; retry shortly"))
    };
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut held = HeldBytes::default();
    if let Some(n) = declared {
        buffer.hold(&mut held, n, BUFFER_WAIT).await.map_err(full)?;
    }
    session.enable_retry_buffering();
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                let len = body.len() + chunk.len();
                if len > max {
                    return Err(too_large());
                }
                if let Some(more) = len.checked_sub(held.bytes()).filter(|n| *n > 0) {
                    buffer
                        .hold(&mut held, more, std::time::Duration::ZERO)
                        .await
                        .map_err(full)?;
                }
                if ctx.check_body_rate(chunk.len()).is_err() {
                    return Err(Rejection::new(
                        408,
                        "request_timeout",
                        "the request body arrived too slowly",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((body.freeze(), held)),
            Err(e) => {
                return Err(Rejection::new(
                    400,
                    "body_read_error",
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}

/// `GET /v1/models`: the enabled models the key's tenant may use.
fn list_models(llm: &LlmState, principal: &Principal) -> Bytes {
    let data: Vec<_> = llm
        .catalog
        .list()
        .iter()
        .filter(|m| principal.tenant.allows_model(&m.model.name))
        .map(|m| model_object(&m.model.name))
        .collect();
    Bytes::from(json!({ "object": "list", "data": data }).to_string())
}

/// `GET /v1/models/{id}`: one model by name or alias, 404 as OpenAI answers
/// it when the model does not exist or the tenant may not use it (a tenant
/// learns nothing of models it cannot use).
fn one_model(llm: &LlmState, principal: &Principal, id: &str) -> Result<Bytes, Stop> {
    match llm.catalog.lookup(id) {
        Some(m) if principal.tenant.allows_model(&m.model.name) => {
            Ok(Bytes::from(model_object(id).to_string()))
        }
        _ => Err(Rejection::new(
            404,
            "model_not_found",
            format!("The model `{id}` does not exist"),
        )
        .into()),
    }
}

fn model_object(id: &str) -> serde_json::Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": "obleth" })
}
