//! An MCP request on its way to its server and back: the credential swap,
//! the body replayed per attempt, the session bound to the key that opened
//! it, and the `tools/list` answer filtered.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use obleth_filters::admission::Permit;
use obleth_filters::records::Principal;
use obleth_filters::telemetry::Durable;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::messages::Posted;
use super::tools_list::ToolsListFilter;
use crate::llm::{HeldBytes, LlmState, McpEndpoint};

/// The session header of MCP's streamable HTTP transport.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// A request to `/mcp/{server}`, from its first gate to `logging`.
pub struct McpCall {
    /// The `{server}` of the path, as the client wrote it.
    pub server: String,
    /// The server, once found in the registry.
    pub endpoint: Option<Arc<McpEndpoint>>,
    /// What a POST carried.
    pub posted: Option<Posted>,
    /// The tool policy refused a call of the POST: nothing was sent.
    pub refused: bool,
    /// The body as sent upstream (a POST's, read whole).
    pub(super) body: Option<Bytes>,
    /// Whether this attempt already sent `body`; reset for each retry.
    pub body_sent: bool,
    pub(super) _held: HeldBytes,
    /// The server's admission slot, when it has a bound.
    pub(super) permit: Option<Permit>,
    /// The session the client presented.
    pub(super) session: Option<String>,
    pub(super) tools: Option<ToolsListFilter>,
    pub upstream_status: Option<u16>,
    /// The ids of the intents, one per metered entry, which the completion
    /// records supersede.
    pub(super) record_ids: Vec<String>,
    /// Resolve once the intents are on disk; taken by the first wait.
    pub(super) intents: Vec<Durable>,
}

/// The longest an answer waits for its intents to be durable (as on LLM
/// routes: only a failing disk makes it matter).
const INTENT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl McpCall {
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            endpoint: None,
            posted: None,
            refused: false,
            body: None,
            body_sent: false,
            _held: HeldBytes::default(),
            permit: None,
            session: None,
            tools: None,
            upstream_status: None,
            record_ids: Vec::new(),
            intents: Vec::new(),
        }
    }

    /// The server's name as a metric label: registered names only.
    pub fn server_label(&self) -> &str {
        self.endpoint.as_ref().map_or("-", |e| e.name.as_str())
    }

    /// How the call was admitted, for its usage records.
    pub fn admission(&self) -> &'static str {
        self.permit
            .as_ref()
            .map_or("fast", |p| p.admission().label())
    }

    pub fn queue_wait(&self) -> std::time::Duration {
        self.permit
            .as_ref()
            .map_or_else(Default::default, Permit::waited)
    }

    /// Waits until the intents are on disk before the answer goes to the
    /// client: a call the client saw answered has a durable record.
    pub async fn wait_for_intents(&mut self) {
        let intents = std::mem::take(&mut self.intents);
        if intents.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(intents.into_iter().map(Durable::wait));
        if tokio::time::timeout(INTENT_WAIT, all).await.is_err() {
            tracing::warn!("MCP usage intents not durable after {INTENT_WAIT:?}; answering anyway");
        }
    }

    /// Sends the server's credential in place of the client's (which never
    /// leaves obleth), to the server's own path and host.
    pub fn rewrite_upstream_request(&self, upstream: &mut RequestHeader) -> Result<()> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(());
        };
        upstream.remove_header(&header::AUTHORIZATION);
        upstream.remove_header("x-api-key");
        if let Some((name, value)) = &endpoint.credential {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        if let Some(direct) = &endpoint.upstream {
            upstream.insert_header(header::HOST, direct.host.clone())?;
        }
        upstream.set_uri(http::Uri::from(endpoint.target.clone()));
        if let Some(body) = &self.body {
            upstream.remove_header(&header::TRANSFER_ENCODING);
            upstream.insert_header(header::CONTENT_LENGTH, body.len())?;
        }
        Ok(())
    }

    /// Sends the body read at the gate once per attempt.
    pub fn replace_body(&mut self, body: &mut Option<Bytes>) {
        let Some(held) = &self.body else {
            return;
        };
        if self.body_sent {
            *body = None;
        } else {
            *body = Some(held.clone());
            self.body_sent = true;
        }
    }

    /// At the server's response head: binds a session the server opened
    /// to the key, forgets one the client ended, and prepares the filter
    /// of a `tools/list` answer.
    pub async fn start_response(
        &mut self,
        llm: &LlmState,
        principal: &Arc<Principal>,
        method: &http::Method,
        response: &mut ResponseHeader,
    ) {
        let status = response.status.as_u16();
        self.upstream_status = Some(status);
        // The server's own authentication challenge is between obleth and
        // the server: a client seeing it would try to log in there.
        response.remove_header(&header::WWW_AUTHENTICATE);
        if !(200..300).contains(&status) {
            return;
        }
        let opened = response
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        match (&self.session, opened) {
            (None, Some(opened)) => llm.mcp_sessions.bind(opened, &principal.key.id).await,
            (Some(ended), _) if method == http::Method::DELETE => llm.mcp_sessions.end(ended).await,
            _ => {}
        }
        let ids = self
            .posted
            .as_ref()
            .map(Posted::tool_list_ids)
            .unwrap_or_default();
        let (Some(endpoint), false) = (self.endpoint.clone(), ids.is_empty()) else {
            return;
        };
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_ascii_lowercase())
            .unwrap_or_default();
        let event_stream = content_type.starts_with(b"text/event-stream");
        if !event_stream && !content_type.starts_with(b"application/json") {
            return;
        }
        let principal = principal.clone();
        self.tools = Some(ToolsListFilter::new(ids, event_stream, move |tool| {
            endpoint.offers(tool) && principal.tenant.allows_mcp_tool(&endpoint.name, tool)
        }));
        response.remove_header(&header::CONTENT_LENGTH);
    }

    pub fn observe_response(&mut self, body: &mut Option<Bytes>, end: bool) {
        if let Some(tools) = self.tools.as_mut() {
            tools.observe(body, end);
        }
    }
}
