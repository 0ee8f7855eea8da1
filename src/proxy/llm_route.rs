//! The `llm` route action in `request_filter`: authenticate the key, read
//! and check the body, pick the model's pool, and later rewrite the request
//! (model name, credential, path) on its way upstream.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use obleth_filters::access::{self, Denied};
use obleth_filters::admission::{Admission, Permit, Refusal, Ticket};
use obleth_filters::auth::{credential, AuthError};
use obleth_filters::budget::{Cost, Decision, Scope};
use obleth_filters::openai::{error_body, BodyError, Endpoint, LlmRequest};
use obleth_filters::records::Principal;
use obleth_filters::usage::UsageMeter;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::json;

use super::{respond, Generation, RequestCtx};
use crate::config::LlmAction;
use crate::llm::{key_scope, tenant_scope, CatalogModel, LlmState};
use crate::metrics::FAMILIES;

/// An LLM request that passed every gate, on its way upstream.
pub struct LlmCall {
    pub principal: Arc<Principal>,
    pub model: Arc<CatalogModel>,
    endpoint: Endpoint,
    /// The body as sent upstream (model rewritten).
    body: Bytes,
    /// Whether this attempt already sent `body`; reset for each retry.
    pub body_sent: bool,
    /// What was reserved, to be settled in `logging`.
    hold: BudgetHold,
    /// Remove the usage event obleth asked for on the client's behalf.
    strip_usage: bool,
    meter: Option<UsageMeter>,
    response_bytes: u64,
    /// Status of the upstream's response head, once it arrived.
    pub upstream_status: Option<u16>,
    /// The admission slot, freed when the call (the request context) ends.
    permit: Permit,
    /// Set when brownout capped the request's output to this many tokens.
    brownout_cap: Option<u64>,
    /// What settlement charged, for the usage record.
    pub charged: Option<Charged>,
}

/// Tokens and cost as settled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charged {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// No usage was reported; the tokens are an estimate.
    pub estimated: bool,
    pub cost_usd: f64,
}

/// The reservations of one request.
struct BudgetHold {
    /// Internal and unique (client-chosen request ids could collide).
    id: String,
    scopes: Vec<Scope>,
    prompt_bound: u64,
    rate: Option<RateLimitHeaders>,
    settled: bool,
}

/// OpenAI-style `x-ratelimit-*-tokens` values of the tenant's bucket.
#[derive(Clone, Copy)]
struct RateLimitHeaders {
    limit: u64,
    remaining: u64,
}

impl RateLimitHeaders {
    /// Time until the bucket is full again at its refill rate.
    fn reset_ms(&self) -> u64 {
        (self.limit.saturating_sub(self.remaining)).saturating_mul(60_000) / self.limit.max(1)
    }

    fn headers(&self) -> Vec<(HeaderName, String)> {
        vec![
            (
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                self.limit.to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                self.remaining.to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-tokens"),
                format!("{}ms", self.reset_ms()),
            ),
        ]
    }
}

/// A refusal with its status and OpenAI error code; the single place where
/// LLM-route failures become responses.
struct Rejection {
    status: u16,
    code: &'static str,
    message: String,
    headers: Vec<(HeaderName, String)>,
}

impl Rejection {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_headers(mut self, headers: Vec<(HeaderName, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::Missing => (401, "missing_api_key"),
            AuthError::Unknown => (401, "invalid_api_key"),
            AuthError::Unavailable(_) => (503, "auth_unavailable"),
        };
        if let AuthError::Unavailable(reason) = &e {
            tracing::error!("key lookup failed: {reason}");
            return Rejection::new(status, code, "key lookup is temporarily unavailable");
        }
        Rejection::new(status, code, e.to_string())
    }
}

impl From<Denied> for Rejection {
    fn from(e: Denied) -> Self {
        Rejection::new(403, e.code(), e.to_string())
    }
}

impl From<Refusal> for Rejection {
    fn from(e: Refusal) -> Self {
        let (status, code) = match e {
            Refusal::QueueFull(_) => (429, "queue_full"),
            Refusal::TimedOut(..) => (503, "queue_timeout"),
        };
        // Waiting longer than a second helps little when a queue is full;
        // after a timeout the queue is long, so ask for more patience.
        let retry_after = if status == 429 { "1" } else { "5" };
        Rejection::new(status, code, format!("{e}; retry later"))
            .with_headers(vec![(header::RETRY_AFTER, retry_after.to_string())])
    }
}

impl From<BodyError> for Rejection {
    fn from(e: BodyError) -> Self {
        let code = match e {
            BodyError::NotJson(_) => "invalid_json",
            BodyError::MissingModel => "missing_model",
            BodyError::InvalidField { .. } => "invalid_value",
        };
        Rejection::new(400, code, e.to_string())
    }
}

async fn reject(session: &mut Session, ctx: &RequestCtx, r: Rejection) -> Result<bool> {
    let content_type = HeaderValue::from_static("application/json");
    let mut headers = r.headers;
    if r.status == 503 && !headers.iter().any(|(n, _)| n == header::RETRY_AFTER) {
        headers.push((header::RETRY_AFTER, "1".to_string()));
    }
    let body = Bytes::from(error_body(r.status, r.code, &r.message));
    respond(
        session,
        r.status,
        &content_type,
        body,
        &ctx.request_id,
        headers,
    )
    .await?;
    Ok(true)
}

/// Runs the LLM gates; `Ok(true)` when a response was already sent.
pub async fn request_filter(
    llm: &LlmState,
    generation: &Generation,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    match admit(llm, generation, action, session, ctx).await {
        Ok(responded) => Ok(responded),
        Err(r) if r.status == CLIENT_GONE => {
            Err(Error::explain(ErrorType::ConnectionClosed, r.message).into_down())
        }
        Err(r) => {
            if r.status == 413 {
                session.set_keepalive(None);
            }
            reject(session, ctx, r).await
        }
    }
}

async fn admit(
    llm: &LlmState,
    generation: &Generation,
    action: &LlmAction,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool, Rejection> {
    let req = session.req_header();
    let endpoint =
        Endpoint::from_request(req.method.as_str(), req.uri.path()).ok_or_else(|| {
            Rejection::new(
                404,
                "unknown_url",
                format!("unknown endpoint: {} {}", req.method, req.uri.path()),
            )
        })?;

    for name in [header::AUTHORIZATION.as_str(), "x-api-key"] {
        if req.headers.get_all(name).iter().nth(1).is_some() {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("more than one {name} header; send one credential"),
            ));
        }
    }
    let secret = credential(
        req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        req.headers.get("x-api-key").map(|v| v.as_bytes()),
    )
    .ok_or(AuthError::Missing)?
    .to_owned();
    let principal = llm.resolver.resolve(&secret).await?;
    ctx.caller = Some(principal.clone());
    access::check(&principal, jiff::Timestamp::now())?;

    if endpoint != Endpoint::Models && llm.telemetry.refusing() {
        return Err(Rejection::new(
            503,
            "usage_log_full",
            "usage cannot be recorded right now; retry later",
        ));
    }
    if endpoint == Endpoint::Models {
        list_models(llm, &principal, session, ctx)
            .await
            .map_err(|_| Rejection::new(500, "internal", "cannot write response"))?;
        return Ok(true);
    }

    let body = read_body(session, ctx, action.max_body).await?;
    let mut request = LlmRequest::parse(&body)?;
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
        ));
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
        ));
    };
    let permit = wait_for_slot(llm, session, &principal, &model, &request).await?;
    let brownout_cap = (permit.admission() == Admission::Brownout
        && endpoint != Endpoint::Embeddings)
        .then_some(llm.admission.brownout_max_tokens);
    if let Some(cap) = brownout_cap {
        request.cap_max_tokens(cap);
    }
    let hold = match reserve(llm, &principal, &model, &request).await {
        Ok(hold) => hold,
        Err(refused) => {
            // Nothing will be served: take the estimate back out of the
            // fair-share accounts.
            permit.correct(0);
            return Err(refused);
        }
    };
    // A stream that did not ask for usage gets it anyway (for settlement);
    // the extra event is removed again on the way back.
    let strip_usage =
        request.stream && !request.asks_for_usage() && endpoint != Endpoint::Embeddings;
    ctx.pool = Some(pool);
    ctx.llm = Some(Box::new(LlmCall {
        body: Bytes::from(request.into_upstream(&model.model.upstream_model, strip_usage)),
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
    }));
    Ok(false)
}

/// Not a response: the client left, so nothing can be sent (logged as 499).
const CLIENT_GONE: u16 = 499;

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
) -> Result<Permit, Rejection> {
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
                return Err(Rejection::new(CLIENT_GONE, "client_gone", "the client left while queued"));
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

/// USD millionths for a token count, rounded up (reservations) or to the
/// nearest (settlements).
fn usd_micros(model: &CatalogModel, prompt: u64, completion: u64, round_up: bool) -> u64 {
    let m = &model.model;
    let usd = prompt as f64 * m.input_cost_per_token + completion as f64 * m.output_cost_per_token;
    let micros = usd * 1e6;
    (if round_up {
        micros.ceil()
    } else {
        micros.round()
    })
    .max(0.0) as u64
}

/// The scopes with limits: the tenant, and the key when it has its own.
fn scopes_of(principal: &Principal) -> Vec<Scope> {
    let now = jiff::Timestamp::now();
    [
        tenant_scope(&principal.tenant, now),
        key_scope(&principal.key, &principal.tenant, now),
    ]
    .into_iter()
    .filter(|s| s.limits.is_limited())
    .collect()
}

/// Reserves the worst-case cost in every scope, or nothing at all.
async fn reserve(
    llm: &LlmState,
    principal: &Principal,
    model: &CatalogModel,
    request: &LlmRequest,
) -> Result<BudgetHold, Rejection> {
    let prompt_bound = request.prompt_bound();
    let completion_bound = request.completion_bound(llm.budget_settings.default_max_tokens);
    let estimate = Cost {
        tokens: prompt_bound.saturating_add(completion_bound),
        usd_micros: usd_micros(model, prompt_bound, completion_bound, true),
    };
    let mut hold = BudgetHold {
        id: format!("{:032x}", rand::random::<u128>()),
        scopes: Vec::new(),
        prompt_bound,
        rate: None,
        settled: false,
    };
    let now = jiff::Timestamp::now().as_millisecond();
    for scope in scopes_of(principal) {
        let decision = llm.budgets.reserve(&scope, &hold.id, estimate, now).await;
        let tpm = scope.limits.tokens_per_minute;
        let rejection = match decision {
            Ok(Decision::Admitted { remaining_tokens }) => {
                if hold.rate.is_none() && tpm > 0 {
                    hold.rate = Some(RateLimitHeaders {
                        limit: tpm,
                        remaining: remaining_tokens.unwrap_or(0),
                    });
                }
                hold.scopes.push(scope);
                continue;
            }
            Ok(Decision::RateLimited { retry_after_ms }) => {
                FAMILIES
                    .budget_rejections
                    .with_label_values(&["rate"])
                    .inc();
                let rate = RateLimitHeaders {
                    limit: tpm,
                    remaining: 0,
                };
                Rejection::new(429, "rate_limit_exceeded", format!("tokens per minute exhausted ({} needed, limit {tpm}); retry in {retry_after_ms} ms", estimate.tokens))
                    .with_headers(rate.headers())
                    .with_headers(vec![(header::RETRY_AFTER, retry_after_ms.div_ceil(1000).max(1).to_string())])
            }
            Ok(Decision::TooLarge) => {
                FAMILIES
                    .budget_rejections
                    .with_label_values(&["too_large"])
                    .inc();
                Rejection::new(429, "request_too_large", format!("this request may use {} tokens, more than the limit of {tpm} per minute; lower max_tokens", estimate.tokens))
            }
            Ok(Decision::BudgetExhausted) => {
                FAMILIES
                    .budget_rejections
                    .with_label_values(&["term"])
                    .inc();
                Rejection::new(
                    403,
                    "budget_exhausted",
                    "the token or spending budget is exhausted",
                )
            }
            Err(e) if llm.budget_settings.fail_open => {
                FAMILIES.budget_fail_open.inc();
                tracing::warn!("admitting without a reservation (fail_open): {e}");
                continue;
            }
            Err(e) => {
                FAMILIES
                    .budget_rejections
                    .with_label_values(&["unavailable"])
                    .inc();
                tracing::error!("refusing (fail_open is off): {e}");
                Rejection::new(
                    503,
                    "budget_unavailable",
                    "budgets cannot be checked right now",
                )
            }
        };
        // Give back what earlier scopes reserved for this request.
        for reserved in &hold.scopes {
            if let Err(e) = llm
                .budgets
                .settle(reserved, &hold.id, Cost::default(), now)
                .await
            {
                tracing::warn!("cannot release a reservation: {e}");
            }
        }
        return Err(rejection);
    }
    Ok(hold)
}

/// Reads the whole body (bounded); Pingora keeps it for the upstream and
/// `LlmCall::replace_body` swaps in the rewritten one.
async fn read_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    max: usize,
) -> Result<Bytes, Rejection> {
    let too_large = || {
        Rejection::new(
            413,
            "request_too_large",
            format!("request body larger than {max} bytes"),
        )
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
    session.enable_retry_buffering();
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(too_large());
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
            Ok(None) => return Ok(body.freeze()),
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

async fn list_models(
    llm: &LlmState,
    principal: &Principal,
    session: &mut Session,
    ctx: &RequestCtx,
) -> Result<()> {
    let data: Vec<_> = llm
        .catalog
        .list()
        .iter()
        .filter(|m| principal.tenant.allows_model(&m.model.name))
        .map(|m| json!({ "id": m.model.name, "object": "model", "created": 0, "owned_by": "obleth" }))
        .collect();
    let body = serde_json::to_vec(&json!({ "object": "list", "data": data })).unwrap_or_default();
    let content_type = HeaderValue::from_static("application/json");
    respond(
        session,
        200,
        &content_type,
        Bytes::from(body),
        &ctx.request_id,
        None,
    )
    .await
}

impl LlmCall {
    /// How the call was admitted, as the metric label.
    pub fn admission(&self) -> &'static str {
        self.permit.admission().label()
    }

    pub fn queue_wait(&self) -> std::time::Duration {
        self.permit.waited()
    }

    /// Rate-limit headers for the response, when the tenant has a bucket,
    /// and the brownout mark when the output was capped.
    pub fn response_headers(&self) -> Vec<(HeaderName, String)> {
        let mut headers = self.hold.rate.map(|r| r.headers()).unwrap_or_default();
        if let Some(cap) = self.brownout_cap {
            headers.push((
                HeaderName::from_static("x-obleth-degraded"),
                format!("brownout; max_tokens={cap}"),
            ));
        }
        headers
    }

    /// Starts metering a response with `status` and `content_type`.
    pub fn start_response(&mut self, status: u16, content_type: Option<&[u8]>) {
        self.upstream_status = Some(status);
        if (200..300).contains(&status) {
            let event_stream = content_type.is_some_and(|c| c.starts_with(b"text/event-stream"));
            self.meter = Some(UsageMeter::new(event_stream, self.strip_usage));
        }
    }

    /// Whether the response body is rewritten (usage event removed).
    pub fn strips_usage(&self) -> bool {
        self.meter.is_some() && self.strip_usage
    }

    /// Meters a response chunk going to the client (and drops the usage
    /// event the client did not ask for).
    pub fn observe_response(&mut self, body: &mut Option<Bytes>, end: bool) {
        let Some(meter) = self.meter.as_mut() else {
            return;
        };
        let chunk = body.as_deref().unwrap_or_default();
        self.response_bytes += chunk.len() as u64;
        if let Some(replaced) = meter.observe(chunk, end) {
            *body = Some(Bytes::from(replaced));
        }
    }

    /// Settles every reservation exactly once: the reported usage, else an
    /// estimate of what was generated, or nothing when the upstream gave no
    /// successful response.
    pub async fn settle(&mut self, llm: &LlmState) {
        if std::mem::replace(&mut self.hold.settled, true) {
            return;
        }
        let succeeded = self
            .upstream_status
            .is_some_and(|s| (200..300).contains(&s));
        let reported = self.meter.as_ref().and_then(UsageMeter::usage);
        let (outcome, prompt, completion) = match (succeeded, reported) {
            (false, _) => ("refunded", 0, 0),
            (true, Some(u)) => ("charged", u.prompt_tokens, u.completion_tokens),
            (true, None) => {
                // No usage reported: bill an estimate of the text, never zero.
                let completion = match &self.meter {
                    Some(m) if m.streamed_chunks() > 0 => m.streamed_chunks(),
                    _ => self.response_bytes.div_ceil(4),
                };
                ("estimated", self.hold.prompt_bound.div_ceil(4), completion)
            }
        };
        self.permit.correct(prompt + completion);
        FAMILIES.tokens.with_label_values(&["input"]).inc_by(prompt);
        FAMILIES
            .tokens
            .with_label_values(&["output"])
            .inc_by(completion);
        let actual = Cost {
            tokens: prompt + completion,
            usd_micros: usd_micros(&self.model, prompt, completion, false),
        };
        self.charged = Some(Charged {
            input_tokens: prompt,
            output_tokens: completion,
            estimated: outcome == "estimated",
            cost_usd: actual.usd_micros as f64 / 1e6,
        });
        let now = jiff::Timestamp::now().as_millisecond();
        for scope in &self.hold.scopes {
            let label = match llm.budgets.settle(scope, &self.hold.id, actual, now).await {
                Ok(true) => outcome,
                Ok(false) => "repeated",
                Err(e) => {
                    tracing::error!(scope = %scope.id, "settlement failed: {e}");
                    "failed"
                }
            };
            FAMILIES.settlements.with_label_values(&[label]).inc();
        }
    }

    /// Replaces the client's credential with the model's upstream key, sets
    /// the length of the rewritten body, and for models with a base URL the
    /// path and host.
    pub fn rewrite_upstream_request(&self, upstream: &mut RequestHeader) -> Result<()> {
        upstream.remove_header("x-api-key");
        match &self.model.model.upstream_key {
            Some(key) => upstream.insert_header(header::AUTHORIZATION, format!("Bearer {key}"))?,
            None => {
                upstream.remove_header(&header::AUTHORIZATION);
            }
        }
        upstream.remove_header(&header::TRANSFER_ENCODING);
        upstream.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        if let Some(direct) = &self.model.direct {
            let suffix = match self.endpoint {
                Endpoint::ChatCompletions => "/chat/completions",
                Endpoint::Completions => "/completions",
                Endpoint::Embeddings => "/embeddings",
                Endpoint::Models => "/models",
            };
            let path = format!("{}{suffix}", direct.base_path);
            let uri = path
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "base_url path", e))?;
            upstream.set_uri(uri);
            upstream.insert_header(header::HOST, direct.host.clone())?;
        }
        Ok(())
    }

    /// Sends the rewritten body once per attempt in place of the client's.
    pub fn replace_body(&mut self, body: &mut Option<Bytes>) {
        if self.body_sent {
            *body = None;
        } else {
            *body = Some(self.body.clone());
            self.body_sent = true;
        }
    }
}
