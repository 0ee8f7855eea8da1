//! A client session whose request body obleth has already read, so that
//! Pingora sends that body upstream on every attempt, whatever its size.
//!
//! An LLM route reads the whole body in `request_filter` (to route by its
//! `model` and to budget it). Pingora then replays a body only from its retry
//! buffer, which holds at most 64 KiB (`BODY_BUF_LIMIT` in pingora-core): a
//! larger body would never reach the upstream. While the request is being
//! proxied, [`PresetBody::install`] puts this wrapper in place of the client
//! session: it answers `get_retry_buffer` with the rewritten body and passes
//! everything else to the real session, which [`PresetBody::remove`] puts
//! back once the upstream answered or the request failed (before Pingora
//! decides about keep-alive and reuse, which only a real session can do).
//!
//! Bodies that fit the retry buffer keep Pingora's own path.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::server::Session as HttpSession;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::proxy::Session;

type MessageReader = Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

/// The client session, and the body Pingora sends upstream in its place.
pub struct PresetBody {
    client: Box<HttpSession>,
    body: Bytes,
}

impl PresetBody {
    /// Wraps the session's client side so each attempt sends `body`.
    pub fn install(session: &mut Session, body: Bytes) {
        // A stand-in for the moment the real session is moved.
        let stand_in = HttpSession::new_http1(Box::new(tokio::io::duplex(1).0));
        let client = std::mem::replace(&mut *session.downstream_session, stand_in);
        *session.downstream_session = HttpSession::new_custom(Box::new(PresetBody {
            client: Box::new(client),
            body,
        }));
    }

    /// Puts the real client session back; nothing when none was wrapped.
    pub fn remove(session: &mut Session) {
        if !session.downstream_session.is_custom() {
            return;
        }
        let stand_in = HttpSession::new_http1(Box::new(tokio::io::duplex(1).0));
        match std::mem::replace(&mut *session.downstream_session, stand_in) {
            HttpSession::Custom(custom) => {
                // SAFETY: the only custom client session obleth ever makes is
                // the `PresetBody` that `install` boxed (its listeners speak
                // HTTP/1 and HTTP/2, never a custom protocol), so this box
                // holds a `PresetBody`; the cast drops the vtable and keeps
                // the allocation's address.
                let preset = unsafe { Box::from_raw(Box::into_raw(custom) as *mut PresetBody) };
                *session.downstream_session = *preset.client;
            }
            other => *session.downstream_session = other,
        }
    }
}

#[async_trait]
impl CustomSession for PresetBody {
    fn req_header(&self) -> &RequestHeader {
        self.client.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.client.req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, _end: bool) -> Result<()> {
        self.client.write_response_header(resp).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, _end: bool) -> Result<()> {
        self.client.write_response_header_ref(resp).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.client.write_response_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.client.write_response_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        self.client.response_duplex_vec(tasks).await
    }

    fn proxy_tasks_enabled(&self) -> bool {
        self.client.supports_proxy_task_api()
    }

    fn set_proxy_tasks_enabled(&mut self, enabled: bool) {
        self.client.set_proxy_tasks_enabled(enabled)
    }

    fn send_proxy_task(&mut self, task: HttpTask) {
        self.client.send_downstream_proxy_task(task)
    }

    fn has_pending_proxy_tasks(&self) -> bool {
        self.client.has_pending_downstream_proxy_tasks()
    }

    async fn write_proxy_tasks(&mut self) -> Result<bool> {
        self.client.write_downstream_proxy_tasks().await
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.client.set_read_timeout(timeout)
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.client.get_read_timeout()
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.client.set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.client.get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.client.set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.client.get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.client.request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.client.response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.client.shutdown().await
    }

    fn is_body_done(&mut self) -> bool {
        true
    }

    async fn finish(&mut self) -> Result<()> {
        self.client.finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body.is_empty()
    }

    async fn read_body_or_idle(&mut self, _no_body_expected: bool) -> Result<Option<Bytes>> {
        // The body is read: only the client leaving is news.
        self.client.read_body_or_idle(true).await
    }

    fn body_bytes_sent(&self) -> usize {
        self.client.body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.client.body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.client.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.client.digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.client.client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.client.server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.client.to_h1_raw()
    }

    fn enable_retry_buffering(&mut self) {}

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body.clone())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(&mut self) -> Option<MessageReader> {
        None
    }

    fn restore_custom_message_reader(&mut self, _reader: MessageReader) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }

    fn is_upgrade_req(&self) -> bool {
        false
    }

    fn was_upgraded(&self) -> bool {
        false
    }
}
