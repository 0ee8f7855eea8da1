//! Budget reservations of one request, across its scopes, and the
//! rate-limit headers they produce.

use http::header::{self, HeaderName};
use obleth_filters::budget::{Cost, Decision, Scope};
use obleth_filters::openai::LlmRequest;
use obleth_filters::records::Principal;
use pingora::prelude::*;

use crate::llm::{key_scope, tenant_scope, CatalogModel, LlmState};
use crate::metrics::FAMILIES;

use super::rejection::Rejection;

/// The reservations of one request.
pub(super) struct BudgetHold {
    /// Internal and unique (client-chosen request ids could collide).
    pub(super) id: String,
    pub(super) scopes: Vec<Scope>,
    pub(super) prompt_bound: u64,
    pub(super) rate: Option<RateLimitHeaders>,
    pub(super) settled: bool,
}

/// OpenAI-style `x-ratelimit-*-tokens` values of the tenant's bucket.
#[derive(Clone, Copy)]
pub(super) struct RateLimitHeaders {
    pub(super) limit: u64,
    pub(super) remaining: u64,
}

impl RateLimitHeaders {
    /// Time until the bucket is full again at its refill rate.
    pub(super) fn reset_ms(&self) -> u64 {
        (self.limit.saturating_sub(self.remaining)).saturating_mul(60_000) / self.limit.max(1)
    }

    pub(super) fn headers(&self) -> Vec<(HeaderName, String)> {
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

/// USD millionths for a token count, rounded up (reservations) or to the
/// nearest (settlements).
pub(super) fn usd_micros(
    model: &CatalogModel,
    prompt: u64,
    completion: u64,
    round_up: bool,
) -> u64 {
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
pub(super) fn scopes_of(principal: &Principal) -> Vec<Scope> {
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
pub(super) async fn reserve(
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
                if !e.is_store_down() {
                    tracing::warn!("admitting without a reservation (fail_open): {e}");
                }
                continue;
            }
            Err(e) => {
                FAMILIES
                    .budget_rejections
                    .with_label_values(&["unavailable"])
                    .inc();
                if !e.is_store_down() {
                    tracing::error!("refusing (fail_open is off): {e}");
                }
                Rejection::new(
                    503,
                    "budget_unavailable",
                    "budgets cannot be checked right now",
                )
            }
        };
        // Give back what earlier scopes reserved for this request.
        for reserved in &hold.scopes {
            llm.budgets.release(reserved, &hold.id).await;
        }
        return Err(rejection);
    }
    Ok(hold)
}
