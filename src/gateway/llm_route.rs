//! The `llm` route action in `request_filter`: authenticate the key, read
//! and check the body, pick the model's pool, and later rewrite the request
//! (model name, credential, path) on its way upstream.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use obleth_filters::access::{self, Denied};
use obleth_filters::auth::{credential, AuthError};
use obleth_filters::openai::{error_body, BodyError, Endpoint, LlmRequest};
use obleth_filters::records::Principal;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::json;

use super::{respond, Generation, RequestCtx};
use crate::llm::{CatalogModel, LlmState};
use crate::routing::LlmAction;

/// An LLM request that passed every gate, on its way upstream.
pub struct LlmCall {
    pub principal: Arc<Principal>,
    pub model: Arc<CatalogModel>,
    endpoint: Endpoint,
    /// The body as sent upstream (model rewritten).
    body: Bytes,
    /// Whether this attempt already sent `body`; reset for each retry.
    pub body_sent: bool,
}

/// A refusal with its status and OpenAI error code; the single place where
/// LLM-route failures become responses.
struct Rejection {
    status: u16,
    code: &'static str,
    message: String,
}

impl Rejection {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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

impl From<BodyError> for Rejection {
    fn from(e: BodyError) -> Self {
        let code = match e {
            BodyError::NotJson(_) => "invalid_json",
            BodyError::MissingModel => "missing_model",
        };
        Rejection::new(400, code, e.to_string())
    }
}

async fn reject(session: &mut Session, ctx: &RequestCtx, r: Rejection) -> Result<bool> {
    let content_type = HeaderValue::from_static("application/json");
    let retry = (r.status == 503).then(|| (header::RETRY_AFTER, "1".to_string()));
    let body = Bytes::from(error_body(r.status, r.code, &r.message));
    respond(
        session,
        r.status,
        &content_type,
        body,
        &ctx.request_id,
        retry,
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

    let secret = credential(
        req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        req.headers.get("x-api-key").map(|v| v.as_bytes()),
    )
    .ok_or(AuthError::Missing)?
    .to_owned();
    let principal = llm.resolver.resolve(&secret).await?;
    access::check(&principal, jiff::Timestamp::now())?;

    if endpoint == Endpoint::Models {
        list_models(llm, &principal, session, ctx)
            .await
            .map_err(|_| Rejection::new(500, "internal", "cannot write response"))?;
        return Ok(true);
    }

    let body = read_body(session, action.max_body).await?;
    let request = LlmRequest::parse(&body)?;
    let model = llm.catalog.lookup(&request.model).ok_or_else(|| {
        Rejection::new(
            404,
            "model_not_found",
            format!("The model `{}` does not exist", request.model),
        )
    })?;
    let tenant = &principal.tenant;
    if !(tenant.allows_model(&model.model.name) || tenant.allows_model(&request.model)) {
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
    ctx.pool = Some(pool);
    ctx.llm = Some(LlmCall {
        body: Bytes::from(request.to_upstream(&model.model.upstream_model)),
        principal,
        model,
        endpoint,
        body_sent: false,
    });
    Ok(false)
}

/// Reads the whole body (bounded); Pingora keeps it for the upstream and
/// `LlmCall::replace_body` swaps in the rewritten one.
async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, Rejection> {
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
