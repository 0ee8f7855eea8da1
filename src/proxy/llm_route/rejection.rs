//! Refusals on LLM and MCP routes: the one place their failures become statuses and
//! OpenAI-shaped error bodies.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use obleth_filters::access::Denied;
use obleth_filters::admission::Refusal;
use obleth_filters::auth::AuthError;
use obleth_filters::openai::{error_body, BodyError};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{respond, RequestCtx};

/// A refusal with its status and OpenAI error code; the single place where
/// LLM-route failures become responses.
#[derive(Debug)]
pub(in crate::proxy) struct Rejection {
    pub(in crate::proxy) status: u16,
    pub(in crate::proxy) code: &'static str,
    pub(in crate::proxy) message: String,
    pub(in crate::proxy) headers: Vec<(HeaderName, String)>,
}

impl Rejection {
    pub(in crate::proxy) fn new(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub(super) fn with_headers(mut self, headers: Vec<(HeaderName, String)>) -> Self {
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

pub(in crate::proxy) async fn reject(
    session: &mut Session,
    ctx: &RequestCtx,
    r: Rejection,
) -> Result<bool> {
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

/// Ends the gates of an LLM or MCP request: `Ok(true)` once a refusal
/// was answered, an error when the client is gone.
pub(in crate::proxy) async fn conclude(
    admitted: Result<bool, Stop>,
    session: &mut Session,
    ctx: &RequestCtx,
) -> Result<bool> {
    match admitted {
        Ok(responded) => Ok(responded),
        Err(Stop::ClientGone) => Err(Error::explain(
            ErrorType::ConnectionClosed,
            "the client left while queued",
        )
        .into_down()),
        Err(Stop::Refused(r)) => {
            if r.status == 413 {
                session.set_keepalive(None);
            }
            reject(session, ctx, r).await
        }
    }
}

/// Why an LLM request goes no further: refused with an answer, or the
/// client is gone and nothing can be answered (counted as 499).
pub(in crate::proxy) enum Stop {
    Refused(Rejection),
    ClientGone,
}

impl<E: Into<Rejection>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Refused(e.into())
    }
}
