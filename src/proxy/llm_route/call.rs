//! An LLM request past every gate: its upstream body, what it reserved, how
//! its response is metered, and its settlement and usage record.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use obleth_filters::admission::Permit;
use obleth_filters::budget::Cost;
use obleth_filters::openai::Endpoint;
use obleth_filters::records::Principal;
use obleth_filters::telemetry::Durable;
use obleth_filters::usage::UsageMeter;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::llm::{CatalogModel, HeldBytes, LlmState};
use crate::metrics::FAMILIES;

use super::budget::{usd_micros, BudgetHold};

/// An LLM request that passed every gate, on its way upstream.
pub struct LlmCall {
    pub principal: Arc<Principal>,
    pub model: Arc<CatalogModel>,
    pub(super) endpoint: Endpoint,
    /// The body as sent upstream (model rewritten).
    pub(super) body: Bytes,
    /// Whether this attempt already sent `body`; reset for each retry.
    pub body_sent: bool,
    /// `body`'s share of the process-wide buffer, given back with the call.
    pub(super) _held: HeldBytes,
    /// What was reserved, to be settled in `logging`.
    pub(super) hold: BudgetHold,
    /// Remove the usage event obleth asked for on the client's behalf.
    pub(super) strip_usage: bool,
    pub(super) meter: Option<UsageMeter>,
    pub(super) response_bytes: u64,
    /// Status of the upstream's response head, once it arrived.
    pub upstream_status: Option<u16>,
    /// The admission slot, freed when the call (the request context) ends.
    pub(super) permit: Permit,
    /// Set when brownout capped the request's output to this many tokens.
    pub(super) brownout_cap: Option<u64>,
    /// What settlement charged, for the usage record.
    pub charged: Option<Charged>,
    /// Shared by the intent and the completion record that supersedes it.
    pub record_id: String,
    /// Resolves once the intent is on disk; taken by the first wait.
    pub(super) intent: Option<Durable>,
    /// When the first bytes of a successful response body arrived.
    pub first_token: Option<std::time::Instant>,
}

/// The longest a response waits for its intent to be durable; the group
/// commit takes milliseconds, so only a failing disk makes it matter.
const INTENT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Tokens and cost as settled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charged {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// No usage was reported; the tokens are an estimate.
    pub estimated: bool,
    pub cost_usd: f64,
}

impl LlmCall {
    /// Waits until the intent is on disk before the response (or the
    /// error answer) goes to the client: a request the client saw complete
    /// has a durable record, whenever the process dies after that.
    pub async fn wait_for_intent(&mut self) {
        let Some(intent) = self.intent.take() else {
            return;
        };
        match tokio::time::timeout(INTENT_WAIT, intent.wait()).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("the usage intent was dropped"),
            Err(_) => tracing::warn!(
                "the usage intent is not durable after {INTENT_WAIT:?}; answering anyway"
            ),
        }
    }

    /// The OpenTelemetry GenAI operation (`gen_ai.operation.name`) of the
    /// endpoint; none for endpoints passed through unparsed.
    pub fn operation(&self) -> Option<&'static str> {
        match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Responses => Some("chat"),
            Endpoint::Completions => Some("text_completion"),
            Endpoint::Embeddings => Some("embeddings"),
            Endpoint::Models | Endpoint::Model | Endpoint::Other => None,
        }
    }

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
        if self.first_token.is_none() && !chunk.is_empty() {
            self.first_token = Some(std::time::Instant::now());
        }
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
        // An upstream's figures are input: their sum must not wrap.
        let total = prompt.saturating_add(completion);
        self.permit.correct(total);
        FAMILIES.tokens.with_label_values(&["input"]).inc_by(prompt);
        FAMILIES
            .tokens
            .with_label_values(&["output"])
            .inc_by(completion);
        let actual = Cost {
            tokens: total,
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
            // Settling is local: Redis-backed budgets commit it in the
            // background, once Redis answers when it is down.
            let label = match llm.budgets.settle(scope, &self.hold.id, actual, now).await {
                Ok(true) if !llm.budget_store_up() => "deferred",
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
                Endpoint::Responses => "/responses",
                Endpoint::Models | Endpoint::Model => "/models",
                // What follows the client's `/v1`, query included.
                Endpoint::Other => {
                    let target = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
                    target.rsplit_once("/v1").map_or(target, |(_, tail)| tail)
                }
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
