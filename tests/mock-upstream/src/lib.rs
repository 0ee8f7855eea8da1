//! An OpenAI-compatible mock upstream for obleth's integration tests,
//! benchmarks and demo.
//!
//! Tests start it in-process with [`MockUpstream::start`]; benchmarks and the
//! demo run the `obleth-mock-upstream` binary, which calls [`serve`]. It speaks
//! the real OpenAI wire format (JSON and server-sent events) so the gateway's
//! parsing, metering and streaming paths are exercised exactly as in
//! production, and it misbehaves on request so the proxy's failure handling
//! can be tested too.
//!
//! # Endpoints
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /`, `GET /bench` | `200 ok\n` (`text/plain`), as cheap as possible |
//! | `GET /health` | `200 ok`, or `503 unhealthy` after [`MockUpstream::set_healthy`]`(false)` |
//! | any method, `/echo` and `/echo/…` | `200` JSON `{"method","path","query","headers","body_len"}` |
//! | `GET /v1/models` | the OpenAI model list, with `mock-model` |
//! | `POST /v1/chat/completions` | `chat.completion`, or a `chat.completion.chunk` stream |
//! | `POST /v1/completions` | `text_completion`, or a stream of them |
//! | `POST /v1/embeddings` | an embedding list (8 dimensions unless `dimensions` is given) |
//!
//! Every response carries `x-mock-server: <name>`,
//! `x-mock-saw-authorization` echoes the `Authorization` header received,
//! and `x-mock-received-bytes` / `x-mock-received-fnv1a` give the length and
//! FNV-1a digest (16 hex digits) of the request body received. How tokens are counted is
//! described on the `openai` module; in short, `completion_tokens` is
//! `max_tokens` (default 16, at most 4096) and `prompt_tokens` is the words of
//! the prompt plus 3 per chat message.
//!
//! # Per-request overrides
//!
//! | request header | effect |
//! | --- | --- |
//! | `x-mock-latency-ms: N` | wait N ms before the response headers (instead of [`MockConfig::latency`]) |
//! | `x-mock-status: N` | answer status N (200..=599); 4xx/5xx carry an OpenAI error body |
//! | `x-mock-tps: F` | stream at F tokens per second (instead of [`MockConfig::tokens_per_second`]) |
//! | `x-mock-fault: close` | close the connection without sending a byte |
//! | `x-mock-fault: hang` | never answer; the connection stays open until the client leaves |
//! | `x-mock-fault: close-mid-body` | send the headers and part of the body (2 events of a stream, half of any other body), then abort the connection |
//! | `x-mock-fault: slow-body-ms:N` | send the headers at once, then the body in at least 3 chunks N ms apart |
//!
//! A malformed override header is answered with a 400, so a typo in a test
//! does not go unnoticed.
//!
//! # Connections
//!
//! Every accepted TCP connection is served by hyper's HTTP/1 server directly
//! (keep-alive on), raced against a per-connection "kill" signal and the
//! server-wide stop signal: dropping the connection future closes the socket
//! at once, which is how faults that must cut a connection are produced.

mod faults;
mod handler;
mod openai;

use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// How a mock upstream behaves when a request does not override it.
///
/// One value configures one server; per-request `x-mock-*` headers override
/// the latency, status and pace for a single request so one server can serve
/// many test cases.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Server identity, sent in the `x-mock-server` header of every response,
    /// so tests can tell which upstream a proxied request reached.
    pub name: String,
    /// Delay before the response headers are sent, to simulate a slow
    /// upstream (time to first byte).
    pub latency: Duration,
    /// Streaming pace: the delay before each SSE token event is
    /// `1 / tokens_per_second`; `0` (or infinity) streams without delay.
    pub tokens_per_second: f64,
    /// When set, every `/v1/*` request is answered with this status (with an
    /// OpenAI-shaped error body for 4xx/5xx), to simulate a failing provider.
    pub status: Option<u16>,
}

impl Default for MockConfig {
    /// A healthy, instant server named `mock`.
    fn default() -> Self {
        Self {
            name: "mock".to_owned(),
            latency: Duration::ZERO,
            tokens_per_second: 0.0,
            status: None,
        }
    }
}

/// A running in-process mock upstream and the handle to observe and control it.
///
/// The server runs in tasks spawned on the current tokio runtime. Dropping
/// the handle does *not* stop it (it keeps serving until [`MockUpstream::stop`]
/// or until the runtime shuts down), so a helper may return just `addr`.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    /// The address the server listens on (always `127.0.0.1:<port>` for
    /// [`MockUpstream::start`]), to configure as the proxy's upstream.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<ListenerSlot>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and starts serving in a spawned task, so each
    /// test gets its own server on a free port.
    ///
    /// Must be called within a tokio runtime. Fails if the port cannot be
    /// bound or the config is invalid (a `name` that is not a valid header
    /// value, or a `status` outside 200..=599).
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, config).await
    }

    /// Starts serving on an already-bound listener, for tests that need a
    /// specific address or must know the port before the server runs.
    pub async fn start_on(listener: TcpListener, config: MockConfig) -> io::Result<MockUpstream> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config)?);
        let listener = Arc::new(ListenerSlot::new(listener));
        tokio::spawn(accept_loop(listener.clone(), shared.clone()));
        Ok(MockUpstream {
            addr,
            shared,
            listener,
        })
    }

    /// Total requests received on any path (counted when the request head
    /// arrives, whatever the answer), to assert how often the proxy called
    /// this upstream (retries, failover, health checks).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Flips `GET /health` between 200 (`true`) and 503 (`false`), to drive
    /// the proxy's active health checks.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Stops the server: the listener is closed before this returns (so later
    /// connects are refused) and every open connection is closed promptly,
    /// mid-response or not, to simulate an upstream going down.
    pub fn stop(&self) {
        drop(self.listener.take());
        self.shared.shutdown.send_replace(true);
    }

    /// Total TCP connections accepted, so tests can assert that the proxy
    /// reuses (pools) upstream connections.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// TCP connections currently open, so tests can assert that the proxy
    /// closes the upstream connection when its client goes away.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }
}

/// Serves on `listener` until the process ends; the entry point of the
/// `obleth-mock-upstream` binary (benchmarks and the demo).
///
/// Accept errors (such as running out of file descriptors under load) are
/// reported on stderr and retried, so this only returns early if the config
/// is invalid (see [`MockUpstream::start`]).
pub async fn serve(listener: TcpListener, config: MockConfig) -> io::Result<()> {
    let shared = Arc::new(Shared::new(config)?);
    accept_loop(Arc::new(ListenerSlot::new(listener)), shared).await;
    Ok(())
}

/// State shared by the handle, the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    /// `config.name`, validated and ready to put in every response.
    pub(crate) server_header: HeaderValue,
    pub(crate) requests: AtomicU64,
    pub(crate) healthy: AtomicBool,
    connections: AtomicU64,
    open_connections: AtomicUsize,
    /// Set to `true` once by [`MockUpstream::stop`]; never dropped while a
    /// task runs, since the tasks own `Shared`.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn new(config: MockConfig) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let server_header = HeaderValue::from_str(&config.name)
            .map_err(|_| invalid(format!("invalid mock server name {:?}", config.name)))?;
        if let Some(status) = config.status {
            if !(200..=599).contains(&status) {
                return Err(invalid(format!("mock status {status} is not in 200..=599")));
            }
        }
        if config.tokens_per_second.is_nan() || config.tokens_per_second < 0.0 {
            return Err(invalid(format!(
                "tokens_per_second {} is not a non-negative number",
                config.tokens_per_second
            )));
        }
        Ok(Self {
            config,
            server_header,
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            connections: AtomicU64::new(0),
            open_connections: AtomicUsize::new(0),
            shutdown: watch::Sender::new(false),
        })
    }
}

/// The listening socket, behind a lock so [`MockUpstream::stop`] can close it
/// synchronously while the accept loop polls it.
#[derive(Debug)]
struct ListenerSlot(Mutex<Option<TcpListener>>);

impl ListenerSlot {
    fn new(listener: TcpListener) -> Self {
        Self(Mutex::new(Some(listener)))
    }

    fn lock(&self) -> MutexGuard<'_, Option<TcpListener>> {
        // The guarded code cannot panic halfway, so a poisoned lock is fine.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Option<TcpListener> {
        self.lock().take()
    }

    /// `None` once the listener has been taken away by `stop`.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<TcpStream>>> {
        match self.lock().as_ref() {
            Some(listener) => listener
                .poll_accept(cx)
                .map(|accepted| Some(accepted.map(|(stream, _peer)| stream))),
            None => Poll::Ready(None),
        }
    }
}

async fn accept_loop(listener: Arc<ListenerSlot>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            accepted = poll_fn(|cx| listener.poll_accept(cx)) => accepted,
        };
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
            Some(Err(err)) => {
                // Typically EMFILE or a connection reset before accept: back
                // off briefly instead of spinning, and keep serving.
                eprintln!("obleth-mock-upstream: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keeps `open_connections` exact however the connection task ends.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _open = OpenConnection::new(shared.clone());
    // Small SSE events must leave at once, not wait for Nagle.
    if let Err(err) = stream.set_nodelay(true) {
        eprintln!("obleth-mock-upstream: set_nodelay failed: {err}");
    }
    let mut shutdown = shared.shutdown.subscribe();
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = kill.clone();
        let shared = shared.clone();
        service_fn(move |req| handler::handle(req, shared.clone(), kill.clone()))
    };
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    // Whichever finishes first, the connection future is dropped here, which
    // closes the socket. Connection errors (the client went away, or a fault
    // aborted the body) are the expected way for a mock connection to end.
    tokio::select! {
        _ = connection => {}
        _ = kill.notified() => {}
        _ = shutdown.wait_for(|stopped| *stopped) => {}
    }
}
