//! Test harness: starts the real `obleth` binary on ephemeral ports with a
//! configuration written to a private directory, and talks to it over
//! sockets.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use obleth_mock_upstream::{MockConfig, MockUpstream};

pub mod clickhouse_cluster;
use serde_json::{json, Value};

/// The admin token every test instance runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123";

/// Stands for the test instance's own HTTP listener address in a
/// configuration body that brings its own `listeners:` section, so
/// [`Obleth::start`] can pick (and, when another test took it first,
/// re-pick) the port itself.
pub const LISTEN: &str = "$LISTEN";

/// A port that was free a moment ago. Another test process may take it
/// before it is bound: prefer [`LISTEN`], which [`Obleth::start`] retries.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// `N` distinct ports that were free a moment ago: all are held at once
/// while they are picked, so none is handed out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("an ephemeral port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("bound").port())
}

/// A private directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "obleth-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn mock(name: &str) -> MockUpstream {
    MockUpstream::start(MockConfig {
        name: name.into(),
        ..Default::default()
    })
    .await
    .expect("mock upstream starts")
}

/// A running obleth process.
pub struct Obleth {
    child: Option<Child>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub access_log: PathBuf,
    pub stderr_log: PathBuf,
}

/// The sections every test configuration gets unless it brings its own.
fn frame(
    body: &str,
    http: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    access_log: &Path,
    format: &str,
) -> String {
    let body = body.replace(LISTEN, &http.to_string());
    let mut text = String::new();
    if !body.contains("listeners:") {
        text.push_str(&format!(
            "listeners:\n  - name: http\n    address: {http}\n"
        ));
    }
    text.push_str(&format!(
        "admin:\n  address: {admin}\nmetrics:\n  address: {metrics}\n"
    ));
    if !body.contains("access_log:") {
        text.push_str(&format!(
            "access_log:\n  format: {format}\n  path: {}\n",
            access_log.display()
        ));
    }
    if !body.contains("server:") {
        text.push_str("server:\n  threads: 2\n  grace: 5s\n");
    }
    if !body.contains("store:") {
        let db = access_log.with_file_name("obleth.db");
        text.push_str(&format!(
            "store:\n  database_url: 'sqlite://{}'\n",
            db.display()
        ));
    }
    text.push_str(&body);
    text
}

/// How waiting for a started instance ended.
enum Start {
    Ready,
    /// One of its ports was taken by another test meanwhile.
    PortTaken,
}

impl Obleth {
    /// Starts obleth with `body` (pools, routes, …); listeners, admin,
    /// metrics and access log sections are added on free ports.
    pub async fn start(body: &str) -> Self {
        Self::start_with(body, "httplog", &[]).await
    }

    /// Starts obleth as [`Obleth::start`] does, with the access log in
    /// `access_log_format` and extra environment variables. Ports taken by
    /// a parallel test between picking and binding are picked again.
    pub async fn start_with(body: &str, access_log_format: &str, env: &[(&str, &str)]) -> Self {
        for _ in 0..4 {
            let mut obleth = Self::spawn(body, access_log_format, env);
            match obleth.wait_ready().await {
                Start::Ready => return obleth,
                Start::PortTaken => continue,
            }
        }
        panic!("obleth found its ports taken four times in a row");
    }

    fn spawn(body: &str, access_log_format: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new();
        let [http, admin, metrics] =
            free_ports::<3>().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let access_log = dir.path().join("access.log");
        let stderr_log = dir.path().join("stderr.log");
        let config_path = dir.path().join("obleth.yaml");
        std::fs::write(
            &config_path,
            frame(body, http, admin, metrics, &access_log, access_log_format),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_obleth"))
            .args(["run", "-c"])
            .arg(&config_path)
            .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("OBLETH_WAL_PATH", dir.path().join("wal"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log).expect("stderr log"))
            .spawn()
            .expect("obleth starts");
        Self {
            child: Some(child),
            http,
            admin,
            metrics,
            dir,
            config_path,
            access_log,
            stderr_log,
        }
    }

    async fn wait_ready(&mut self) -> Start {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = client();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let stderr = self.stderr();
                if stderr
                    .to_ascii_lowercase()
                    .contains("address already in use")
                {
                    self.child = None;
                    return Start::PortTaken;
                }
                panic!("obleth exited early ({status}):\n{stderr}");
            }
            // The port was taken between obleth's claim and Pingora's bind.
            if self.stderr().contains("is in use, will try again") {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Start::PortTaken;
            }
            let ready = client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Start::Ready;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("obleth not ready in time:\n{}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The URL of `path` on the admin listener (`/healthz`, `/api/v1/…`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits until obleth's log contains `text`, failing the test with the
    /// log after `limit`.
    pub async fn wait_stderr(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log after {limit:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Rewrites the configuration file and sends SIGHUP.
    pub fn reload(&self, body: &str) {
        let text = frame(
            body,
            self.http,
            self.admin,
            self.metrics,
            &self.access_log,
            "httplog",
        );
        std::fs::write(&self.config_path, text).expect("write config");
        self.signal("HUP");
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn metrics_text(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample, e.g. `obleth_upstream_retries_total{pool="a"}`;
    /// panics when /metrics has no such sample, so a renamed metric or
    /// label cannot pass for a zero.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics_text().await;
        sample_value(&text, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
    }

    /// Waits until `sample` satisfies `holds`, failing the test with the
    /// last value after `limit`: the way to synchronise with obleth instead
    /// of sleeping.
    pub async fn wait_metric(&self, sample: &str, holds: impl Fn(f64) -> bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.try_metric(sample).await;
            if value.is_some_and(&holds) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} is {value:?} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `sample` is at least `n`: what most waits on a counter or
    /// gauge ask for.
    pub async fn wait_at_least(&self, sample: &str, n: f64, limit: Duration) {
        self.wait_metric(sample, |v| v >= n, limit).await;
    }

    /// The value of one sample, or `None` while it has never been set
    /// (a labelled counter appears on its first increment).
    pub async fn try_metric(&self, sample: &str) -> Option<f64> {
        sample_value(&self.metrics_text().await, sample)
    }

    /// Access log lines written so far (waits briefly for the writer).
    pub async fn access_lines(&self, at_least: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= at_least || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

impl Drop for Obleth {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client that does not pool connections across tests' servers and
/// never follows redirects.
/// Sends `bytes` over a fresh connection to `addr` and reads what comes
/// back until the peer closes or `limit` passes: HTTP as a raw socket sees
/// it, for requests no client library would send.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_until_closed(&mut stream, limit).await
}

/// Reads until the peer closes or `limit` passes.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 16 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response header as text; empty when absent or not text.
pub fn header_text(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A client whose connections come from 127.0.0.`last` (every 127.0.0.0/8
/// address is this machine): a distinct client address for source rules
/// and per-client limits.
pub fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A pool section for `servers`, with extra YAML lines for the pool.
pub fn pool(name: &str, servers: &[&MockUpstream], extra: &str) -> String {
    let mut text = format!("  - name: {name}\n    servers:\n");
    for s in servers {
        text.push_str(&format!("      - address: {}\n", s.addr));
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// One pool `p` of `servers` (plus `extra` pool lines) behind a catch-all
/// proxy route: what [`proxy_to`] starts, for tests that reload it or add
/// sections of their own.
pub fn proxy_config(servers: &[&MockUpstream], extra: &str) -> String {
    format!("pools:\n{}{}", pool("p", servers, extra), catch_all("p"))
}

/// Starts obleth on [`proxy_config`].
pub async fn proxy_to(servers: &[&MockUpstream], extra: &str) -> Obleth {
    Obleth::start(&proxy_config(servers, extra)).await
}

/// A `routes` section with one catch-all route proxying to `pool`.
pub fn catch_all(pool: &str) -> String {
    format!("routes:\n  - name: all\n    proxy: {{ pool: {pool} }}\n")
}

/// GETs `path` of obleth with one header, mostly an `x-mock-*` instruction
/// for the mock behind it.
pub async fn get_with(obleth: &Obleth, path: &str, header: (&str, &str)) -> reqwest::Response {
    client()
        .get(obleth.url(path))
        .header(header.0, header.1)
        .send()
        .await
        .expect("obleth answers")
}

/// Starts a GET of /echo the mock answers after `latency_ms` and returns
/// once obleth counts it in flight: the request a drain has to wait for.
pub async fn slow_request_in_flight(
    obleth: &Obleth,
    latency_ms: u64,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = obleth.url("/echo");
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .header("x-mock-latency-ms", latency_ms.to_string())
            .send()
            .await
    });
    obleth
        .wait_at_least("obleth_http_in_flight", 1.0, Duration::from_secs(10))
        .await;
    slow
}

/// Asserts that a drain ended cleanly: `slow`, the request it waited for,
/// was answered 200, and obleth then exited with success within 4 s.
pub async fn assert_drained(
    obleth: &mut Obleth,
    slow: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let r = slow
        .await
        .expect("joined")
        .expect("the request in flight completes");
    assert_eq!(r.status(), 200);
    let status = obleth
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
}

/// The body of a GET of `url`, for tests that only look at what came back.
pub async fn get_text(url: &str) -> String {
    let resp = client().get(url).send().await.expect("an answer");
    resp.text().await.expect("a body")
}

/// A POST to obleth's chat completions with `key`, for the caller to add
/// headers and a body to.
pub fn chat_request(obleth: &Obleth, key: &str) -> reqwest::RequestBuilder {
    client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(key)
}

/// POSTs the JSON `body` to `path` of obleth's data plane with `key`.
pub async fn post_json(obleth: &Obleth, key: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(obleth.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("obleth answers")
}

/// POSTs `body` to obleth's chat completions with `key`.
pub async fn post_chat(obleth: &Obleth, key: &str, body: &Value) -> reqwest::Response {
    chat_request(obleth, key)
        .json(body)
        .send()
        .await
        .expect("obleth answers")
}

/// A chat completion of at most two tokens for `model`: the request of the
/// admin and replica tests, which only care whether it is served.
pub fn two_token_chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 })
}

/// Polls `probe` every 20 ms until it returns `expected`, failing the test
/// with the last value after `limit`: how a test waits for a change to reach
/// a running instance.
pub async fn wait_for<T, F, Fut>(what: &str, expected: T, limit: Duration, mut probe: F)
where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    loop {
        let got = probe().await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which mock server answered, from its `x-mock-server` header.
pub fn served_by(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-mock-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// A Postgres database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "obleth_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut conn = sqlx::postgres::PgConnection::connect(PG_ADMIN_URL)
            .await
            .expect("postgres on 127.0.0.1:5432 (scripts/services.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    /// A direct connection, for looking at what obleth stored.
    pub async fn connect(&self) -> sqlx::postgres::PgConnection {
        use sqlx::Connection;
        sqlx::postgres::PgConnection::connect(&self.url)
            .await
            .expect("connect test database")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A connection to the Redis every test shares, for looking at or seeding
/// what obleth keeps there.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("redis on 127.0.0.1:6379")
}

/// Deletes every budget key under `prefix` from Redis, as a flush or a
/// restart without persistence would; returns how many there were.
pub async fn forget_budgets(prefix: &str) -> usize {
    let mut conn = redis_connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}budget:*"))
        .query_async(&mut conn)
        .await
        .expect("list budget keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("delete budget keys");
    }
    keys.len()
}

/// A mock upstream `vllm`, a Postgres database and a Redis prefix of the
/// test's own: what the replicas of one test share.
pub async fn shared_state() -> (MockUpstream, PgDatabase, String) {
    (
        mock("vllm").await,
        PgDatabase::create().await,
        redis_prefix(),
    )
}

/// One pool `p` on `upstream`, the store on `db`, Redis under `prefix` and
/// one `llm` route: how replicas sharing their state are configured.
pub fn shared_store_config(upstream: &MockUpstream, db: &PgDatabase, prefix: &str) -> String {
    format!(
        "pools:\n{}store:\n  database_url: '{}'\nredis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], ""),
        db.url
    )
}

/// A Redis key prefix no other test uses.
pub fn redis_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "obleth-test-{}-{}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `obleth run -c config` to its exit (or kills it after `limit`):
/// whether it exited failing within the limit, and its log.
pub async fn run_to_exit(
    config: &std::path::Path,
    dir: &std::path::Path,
    limit: Duration,
) -> (bool, String) {
    let log = dir.join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["run", "-c"])
        .arg(config)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_WAL_PATH", dir.join("wal-run"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("obleth starts");
    let deadline = Instant::now() + limit;
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Not a thread sleep: the in-process mock upstream shares this runtime.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (exited.is_some_and(|s| !s.success()), text)
}

/// Calls the admin API with the test token.
pub struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    pub fn of(obleth: &Obleth) -> Self {
        Self {
            base: format!("http://{}/api/v1", obleth.admin),
            client: client(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-obleth-actor", "test-suite");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("admin API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Creates a tenant (`spec` as the API takes it; at least a `name`) and
    /// returns its id.
    pub async fn create_tenant(&self, spec: serde_json::Value) -> String {
        let made = self.ok("POST", "/tenants", Some(spec), 201).await;
        made["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a tenant id in {made}"))
            .to_string()
    }

    /// Creates a key of `tenant` (id or name) from `spec` and returns its
    /// id and its secret, shown only now.
    pub async fn create_key(&self, tenant: &str, spec: serde_json::Value) -> CreatedKey {
        let made = self
            .ok("POST", &format!("/tenants/{tenant}/keys"), Some(spec), 201)
            .await;
        let field = |v: &serde_json::Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("a key id and secret in {made}"))
                .to_string()
        };
        CreatedKey {
            id: field(&made["key"]["id"]),
            secret: field(&made["secret"]),
        }
    }

    /// `POST path` with `body`, asserting the status; returns the answer.
    pub async fn post(&self, path: &str, body: Value, expected: u16) -> Value {
        self.ok("POST", path, Some(body), expected).await
    }

    /// `PATCH path` with `body`, asserting the status; returns the answer.
    pub async fn patch(&self, path: &str, body: Value, expected: u16) -> Value {
        self.ok("PATCH", path, Some(body), expected).await
    }

    /// `PUT path` with `body`, asserting the status; returns the answer.
    pub async fn put(&self, path: &str, body: Value, expected: u16) -> Value {
        self.ok("PUT", path, Some(body), expected).await
    }

    /// Creates tenant `tenant`, model `model` on pool `p` and a key of the
    /// tenant; returns the key's secret.
    pub async fn tenant_model_and_key(&self, tenant: &str, model: &str) -> String {
        self.post("/tenants", json!({ "name": tenant }), 201).await;
        self.post("/models", json!({ "name": model, "pool": "p" }), 201)
            .await;
        let key = self.create_key(tenant, json!({ "name": "k" })).await;
        key.secret
    }

    /// Asserts the status and returns the body.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        expected: u16,
    ) -> serde_json::Value {
        let (status, value) = self.call(method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {value}");
        value
    }
}

/// A key as created through the admin API.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub id: String,
    pub secret: String,
}

/// A ClickHouse server of its own (Debian's `clickhouse-server`) on free
/// ports and a temporary data directory; stopped and restarted at will.
pub struct ClickHouse {
    child: Option<Child>,
    pub http: u16,
    config: PathBuf,
    dir: TempDir,
}

impl ClickHouse {
    pub async fn start() -> Self {
        let [http, tcp] = free_ports();
        Self::start_with(http, tcp, "").await
    }

    /// Starts a server on the given HTTP and native ports with `extra`
    /// configuration elements (a cluster's replicas need ZooKeeper,
    /// macros and each other's addresses).
    pub async fn start_with(http: u16, tcp: u16, extra: &str) -> Self {
        let dir = TempDir::new();
        let root = dir.path().display().to_string();
        let config = dir.path().join("config.xml");
        std::fs::write(
            &config,
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n\
                 <logger><level>warning</level><console>1</console></logger>\n\
                 <http_port>{http}</http_port><tcp_port>{}</tcp_port><listen_host>127.0.0.1</listen_host>\n\
                 <path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path>\n\
                 <user_files_path>{root}/user_files/</user_files_path><format_schema_path>{root}/schemas/</format_schema_path>\n\
                 <users_config>{root}/users.xml</users_config>\n\
                 <default_profile>default</default_profile><default_database>default</default_database>\n\
                 <mark_cache_size>104857600</mark_cache_size><uncompressed_cache_size>104857600</uncompressed_cache_size>\n\
                 {extra}</yandex>\n",
                tcp
            ),
        )
        .expect("clickhouse config");
        std::fs::write(
            dir.path().join("users.xml"),
            "<?xml version=\"1.0\"?>\n<yandex><profiles><default></default></profiles>\
             <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\
             <quotas><default></default></quotas></yandex>\n",
        )
        .expect("clickhouse users");
        let mut server = Self {
            child: None,
            http,
            config,
            dir,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Waits (30 s at most) until `sql` answers `expected`.
    pub async fn until_answer(&self, sql: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(sql).await;
            if got.as_deref() == Ok(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: {got:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the server (again) on the same ports and data.
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
        let child = Command::new("/usr/sbin/clickhouse-server")
            .arg(format!("--config-file={}", self.config.display()))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("clickhouse-server starts (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query("SELECT 1").await.as_deref() != Ok("1") {
            assert!(Instant::now() < deadline, "ClickHouse did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `sql`, returning the trimmed response body.
    pub async fn query(&self, sql: &str) -> Result<String, String> {
        let resp = client()
            .post(self.url())
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(text.trim().to_string())
        } else {
            Err(text)
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed certificate for `names` (the first is also its CN) and its
/// key, RSA 2048 or ECDSA P-256, made with the openssl tool: each call
/// writes new files and a new serial.
pub fn self_signed_for(dir: &TempDir, names: &[&str], ecdsa: bool) -> (String, String) {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let stem = format!("{}-{n}", names[0].replace('*', "star"));
    let cert = dir.path().join(format!("{stem}.crt"));
    let key = dir.path().join(format!("{stem}.key"));
    let key_type: &[&str] = if ecdsa {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let status = Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "2"])
        .args(key_type)
        .args(["-subj", &format!("/CN={}", names[0])])
        .args(["-addext", &format!("subjectAltName={}", sans.join(","))])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl req failed");
    (cert.display().to_string(), key.display().to_string())
}

/// A self-signed RSA certificate for `name`.
pub fn self_signed(dir: &TempDir, name: &str) -> (String, String) {
    self_signed_for(dir, &[name], false)
}

/// Runs `obleth ARGS` to completion; returns success, stdout and stderr.
pub fn obleth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(args)
        .output()
        .expect("obleth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
