//! The answers of the edge gates that run once a route matched, before its
//! action: `deny_source` (403) and the per-client rate limit (429), plain
//! text on proxy routes and the OpenAI error shape on LLM routes.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{respond, RequestCtx};
use crate::config::Action;
use crate::edge::routing::Route;

/// Answers 403 to a client a route's `deny_source` refuses.
pub(super) async fn deny_source(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<bool> {
    let message = "requests from this address are not allowed on this route";
    refuse(session, ctx, route, 403, "source_denied", message, None).await
}

/// Answers 429 to a client over the route's `rate_limit`.
pub(super) async fn rate_limited(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    retry_after: u64,
) -> Result<bool> {
    let message = "too many requests from this client; slow down";
    let retry = (header::RETRY_AFTER, retry_after.to_string());
    refuse(
        session,
        ctx,
        route,
        429,
        "rate_limit_exceeded",
        message,
        Some(retry),
    )
    .await
}

/// An edge gate's refusal: in the OpenAI error shape on LLM routes, as
/// plain text elsewhere.
async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    status: u16,
    code: &str,
    message: &str,
    extra: Option<(HeaderName, String)>,
) -> Result<bool> {
    let (content_type, body) = match route.config.action {
        Action::Llm(_) => (
            HeaderValue::from_static("application/json"),
            Bytes::from(obleth_filters::openai::error_body(status, code, message)),
        ),
        _ => (
            HeaderValue::from_static("text/plain"),
            Bytes::from(format!("{status} {message}\n")),
        ),
    };
    respond(session, status, &content_type, body, &ctx.request_id, extra).await?;
    Ok(true)
}
