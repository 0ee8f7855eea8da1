//! The client connection beneath Pingora's HTTP/1 parser. Pingora bounds
//! each read of a request head by a timeout, but not the head as a whole,
//! and accepts heads up to 1 MiB; its own answers to unparsable requests
//! carry `Server: Pingora` and no body. obleth wraps every accepted
//! HTTP/1 connection in a [`GuardedStream`] that
//!
//! - closes a connection whose request head has not fully arrived within
//!   `timeouts.http_request` (HAProxy's `timeout http-request`), answering
//!   408 when part of a head was sent;
//! - answers 431 once a head grows past `max_head_bytes`;
//! - replaces the error responses Pingora writes before any obleth phase
//!   runs with obleth's own: a short text body, `Connection: close`, no
//!   framework banner.
//!
//! [`EdgeApp`] does the wrapping around Pingora's HTTP proxy app, and the
//! proxy phases tell the guard when a head was accepted and when a request
//! ended ([`HeadGuard`]), so only heads are ever timed or measured.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::proxy_protocol::ProxyProtocol;
use crate::config::ClientLimits;
use crate::metrics::FAMILIES;

/// What the proxy phases have said about the request on a connection.
const AWAITING_HEAD: u8 = 0;
const HEAD_ACCEPTED: u8 = 1;

/// The proxy phases' handle on a connection's guard: found from a
/// Pingora session through [`HeadGuard::of`].
#[derive(Debug, Default)]
pub struct HeadGuard {
    state: AtomicU8,
}

impl HeadGuard {
    /// The guard of the connection under `stream`, when it has one (HTTP/1
    /// connections accepted by [`EdgeApp`]).
    pub fn of(stream: Option<&Stream>) -> Option<&HeadGuard> {
        stream
            .and_then(|s| s.as_any().downcast_ref::<GuardedStream>())
            .map(|g| &*g.guard)
    }

    /// obleth parsed and took the request: what follows is its body, and
    /// what is written is obleth's own response.
    pub fn accepted(&self) {
        self.state.store(HEAD_ACCEPTED, Ordering::Release);
    }

    /// The request is over: the next bytes read begin a new head.
    pub fn request_done(&self) {
        self.state.store(AWAITING_HEAD, Ordering::Release);
    }

    fn awaiting_head(&self) -> bool {
        self.state.load(Ordering::Acquire) == AWAITING_HEAD
    }
}

/// How far a request head has come.
struct Head {
    /// Set once the head's time runs: at accept for a connection's first
    /// request, at the first byte for later ones.
    deadline: Option<Pin<Box<Sleep>>>,
    bytes: usize,
    /// Bytes of the current line other than CR.
    line: usize,
    /// Whether anything but blank lines has arrived (RFC 9112 §2.2 lets a
    /// server skip empty lines before the request line).
    started: bool,
    /// Leading bytes that match the h2c preface's first line.
    preface: usize,
}

impl Head {
    fn new(deadline: Option<Instant>) -> Self {
        Self {
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            bytes: 0,
            line: 0,
            started: false,
            preface: 0,
        }
    }

    /// Takes in newly read bytes; returns where the head ends in them, if
    /// it does.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.bytes += 1;
            match b {
                b'\n' if self.line == 0 && self.started => return Some(i + 1),
                b'\n' => self.line = 0,
                b'\r' => {}
                _ => {
                    self.line += 1;
                    self.started = true;
                }
            }
        }
        None
    }
}

/// Why a connection was closed before its head was complete.
#[derive(Clone, Copy)]
enum Refusal {
    HeadTimeout,
    HeadTooLarge,
}

impl Refusal {
    fn response(self) -> &'static [u8] {
        match self {
            Refusal::HeadTimeout => b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 43\r\nconnection: close\r\n\r\n408 the request head took too long to send\n",
            Refusal::HeadTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 34\r\nconnection: close\r\n\r\n431 the request head is too large\n",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::HeadTimeout => "head_timeout",
            Refusal::HeadTooLarge => "head_too_large",
        }
    }
}

/// A client connection with its head guard; see the module docs.
pub struct GuardedStream {
    inner: Stream,
    guard: Arc<HeadGuard>,
    limits: ClientLimits,
    head: Option<Head>,
    /// A response of obleth's own that stands in for one Pingora wrote:
    /// its bytes, how many are written, and the length of Pingora's.
    replacement: Option<(Vec<u8>, usize, usize)>,
    /// Set once the client opened cleartext HTTP/2 (h2c prior knowledge):
    /// from then on its bytes are frames, not heads, and pass unguarded.
    http2: bool,
}

/// The first line of the client preface of HTTP/2 with prior knowledge
/// (RFC 9113 §3.4); no HTTP/1 request starts with it.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl GuardedStream {
    pub fn new(inner: Stream, limits: ClientLimits) -> Self {
        let first_deadline = Instant::now() + limits.http_request;
        Self {
            inner,
            guard: Arc::new(HeadGuard {
                state: AtomicU8::new(AWAITING_HEAD),
            }),
            limits,
            head: Some(Head::new(Some(first_deadline))),
            replacement: None,
            http2: false,
        }
    }

    /// Best effort: the refusal goes out if the socket takes it at once.
    fn refuse(&mut self, cx: &mut Context<'_>, refusal: Refusal) -> io::Error {
        FAMILIES
            .connections_closed
            .with_label_values(&[refusal.reason()])
            .inc();
        let _ = Pin::new(&mut self.inner).poll_write(cx, refusal.response());
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        self.head = None;
        io::Error::new(io::ErrorKind::TimedOut, refusal.reason())
    }
}

/// obleth's answer in place of an error response Pingora generated for a
/// request it could not parse (`HTTP/1.1 400 …` with `Server: Pingora`).
fn replacement_for(written: &[u8]) -> Option<Vec<u8>> {
    let status = written
        .strip_prefix(b"HTTP/1.")?
        .get(2..5)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())?;
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = match status.as_u16() {
        400 => "400 malformed request\n".to_string(),
        code => format!("{code} {}\n", reason.to_ascii_lowercase()),
    };
    Some(
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.http2 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.head.is_none() && this.guard.awaiting_head() {
            this.head = Some(Head::new(None));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some(head) = this.head.as_mut() else {
            return result;
        };
        match result {
            Poll::Pending => {
                let expired = head
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                if head.bytes == 0 {
                    // Nothing was asked: close without an answer.
                    this.head = None;
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                Poll::Ready(Err(this.refuse(cx, Refusal::HeadTimeout)))
            }
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if head.preface == head.bytes {
                    head.preface += fresh
                        .iter()
                        .zip(&H2_PREFACE_LINE[head.preface.min(H2_PREFACE_LINE.len())..])
                        .take_while(|(a, b)| a == b)
                        .count();
                    if head.preface == H2_PREFACE_LINE.len() {
                        // An h2c client: what follows is frames.
                        this.http2 = true;
                        this.head = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                if head.deadline.is_none() {
                    let deadline = Instant::now() + this.limits.http_request;
                    head.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
                }
                // `scan` counts up to the end of the head, not past it.
                let end = head.scan(fresh);
                if head.bytes > this.limits.max_head_bytes {
                    buf.set_filled(before);
                    return Poll::Ready(Err(this.refuse(cx, Refusal::HeadTooLarge)));
                }
                if end.is_some() {
                    this.head = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() && this.guard.awaiting_head() {
            // Nothing of obleth's has run for this request, so this is
            // Pingora answering a request it could not parse.
            if let Some(bytes) = replacement_for(buf) {
                this.replacement = Some((bytes, 0, buf.len()));
            }
        }
        if let Some((bytes, written, claimed)) = this.replacement.as_mut() {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            // Anything Pingora writes after its error head is dropped.
            let claimed = std::mem::replace(claimed, 0);
            return Poll::Ready(Ok(if claimed == 0 { buf.len() } else { claimed }));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Pingora's HTTP app with every HTTP/1 connection guarded. HTTP/2
/// connections (ALPN `h2`) pass as they are: their framing has no heads to
/// trickle, and h2's own limits apply.
///
/// On a plaintext listener with PROXY protocol it reads the relay's header
/// first (a TLS listener reads it before the handshake, in Pingora's
/// pre-TLS hook).
pub struct EdgeApp<A> {
    app: Arc<A>,
    limits: ClientLimits,
    proxy_protocol: Option<ProxyProtocol>,
}

impl<A> EdgeApp<A> {
    pub fn new(app: A, limits: ClientLimits, proxy_protocol: Option<ProxyProtocol>) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            proxy_protocol,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = match &self.proxy_protocol {
            Some(policy) => {
                // A plaintext listener's stream is Pingora's L4 stream itself.
                let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
                policy.accept(&mut l4).await.ok()?;
                l4
            }
            None => stream,
        };
        let _open = crate::supervision::OpenConnection::new();
        let mut stream = stream;
        if crate::supervision::closing_connections() {
            // A connection accepted while this process hands over or drains
            // is served one request. Pingora drops a connection that waits
            // for its first request once shutdown begins, which would reset
            // one whose client has just sent it: wait for the first byte.
            let mut first = [0u8; 1];
            let arrived =
                tokio::time::timeout(self.limits.http_request, stream.try_peek(&mut first));
            if !matches!(arrived.await, Ok(Ok(_))) {
                return None;
            }
        }
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(GuardedStream::new(stream, self.limits))
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        let mut head = Head::new(None);
        assert_eq!(head.scan(b"\r\nGET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(head.scan(b"\n\r\nbody\r\n\r\n"), Some(3));
        assert_eq!(head.bytes, 29, "bytes after the head are not counted");
        let mut bare = Head::new(None);
        assert_eq!(bare.scan(b"GET / HTTP/1.1\nHost: a\n\nrest"), Some(24));
        assert_eq!(bare.bytes, 24);
    }

    #[test]
    fn pingora_error_heads_are_replaced_with_a_body_and_no_banner() {
        let ours = replacement_for(
            b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("replaced");
        let text = String::from_utf8(ours).expect("text");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("pingora"), "{text}");
        assert!(text.ends_with("\r\n\r\n400 malformed request\n"), "{text}");
        assert!(text.contains("content-length: 22\r\n"), "{text}");
        assert!(replacement_for(b"garbage").is_none());
    }

    #[test]
    fn refusals_declare_their_exact_length() {
        for r in [Refusal::HeadTimeout, Refusal::HeadTooLarge] {
            let text = std::str::from_utf8(r.response()).expect("text");
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{text}"
            );
        }
    }
}
