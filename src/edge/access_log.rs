//! One access log line per request, as HAProxy's `option httplog` writes it
//! or as JSON. Lines are handed to a writer thread so the request path never
//! waits on the terminal or the disk; when the writer falls behind, lines are
//! dropped and counted rather than stalling requests.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};

const QUEUE_LINES: usize = 65_536;

/// The writer drains the queue, then pauses this long, so under load a
/// request never pays for waking it up and lines are written in batches.
const WRITE_BATCH_PAUSE: Duration = Duration::from_millis(10);

/// What one request did, in the terms of an HAProxy log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    #[serde(skip)]
    pub time: SystemTime,
    pub client: Option<SocketAddr>,
    pub listener: &'a str,
    pub route: &'a str,
    pub pool: &'a str,
    pub server: &'a str,
    /// Milliseconds to connect to the upstream (`Tc`), -1 when never connected.
    pub connect_ms: i64,
    /// Milliseconds until the upstream response head (`Tr`), -1 when none.
    pub response_ms: i64,
    /// Milliseconds for the whole request (`Ta`).
    pub total_ms: i64,
    pub status: u16,
    pub bytes: usize,
    /// Two characters as in HAProxy: who ended the session and in which phase.
    #[serde(skip)]
    pub termination: [char; 2],
    pub retries: usize,
    pub method: &'a str,
    pub uri: &'a str,
    pub version: &'a str,
    pub request_id: &'a str,
    /// The tenant on LLM routes, `-` elsewhere.
    pub tenant: &'a str,
}

enum Message {
    Line(String),
    Sync(mpsc::Sender<()>),
    /// Close and reopen the file (SIGUSR1, after logrotate moved it).
    Reopen,
}

/// The access log sink.
pub struct AccessLog {
    format: AccessLogFormat,
    queue: Option<SyncSender<Message>>,
    dropped: AtomicU64,
}

impl AccessLog {
    pub fn open(config: &AccessLogConfig) -> std::io::Result<Self> {
        if config.format == AccessLogFormat::Off {
            return Ok(Self {
                format: config.format,
                queue: None,
                dropped: AtomicU64::new(0),
            });
        }
        let out: Box<dyn Write + Send> = match &config.path {
            Some(path) => Box::new(open_append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let path = config.path.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, path))?;
        Ok(Self {
            format: config.format,
            queue: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    pub fn log(&self, record: &AccessRecord<'_>) {
        let Some(queue) = &self.queue else { return };
        let uri = redact_credentials(record.uri);
        let record = &AccessRecord {
            uri: &uri,
            ..*record
        };
        let line = match self.format {
            AccessLogFormat::Httplog => httplog_line(record),
            AccessLogFormat::Json => json_line(record),
            AccessLogFormat::Off => return,
        };
        if let Err(TrySendError::Full(_)) = queue.try_send(Message::Line(line)) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!("access log writer is behind; {dropped} lines dropped so far");
            }
        }
    }

    /// Reopens the log file after the lines queued so far, so logrotate can
    /// move it away without `copytruncate`.
    pub fn reopen(&self) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Message::Reopen);
        }
    }

    /// Waits (up to `limit`) until every line logged so far is written.
    pub fn sync(&self, limit: Duration) {
        if let Some(queue) = &self.queue {
            let (tx, rx) = mpsc::channel();
            if queue.send(Message::Sync(tx)).is_ok() {
                let _ = rx.recv_timeout(limit);
            }
        }
    }
}

/// Query parameters that carry credentials in the wild (`?api_key=`,
/// `?token=`, signed URLs): their values never reach the log.
const CREDENTIAL_PARAMETERS: &[&str] = &[
    "api_key",
    "api-key",
    "apikey",
    "key",
    "x-api-key",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "auth",
    "authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "sig",
    "signature",
];

/// `uri` with the values of credential parameters replaced by `REDACTED`.
fn redact_credentials(uri: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.into();
    };
    let secret = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        CREDENTIAL_PARAMETERS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
            && pair.contains('=')
    };
    if !query.split('&').any(secret) {
        return uri.into();
    }
    let mut out = String::with_capacity(uri.len());
    out.push_str(path);
    for (i, pair) in query.split('&').enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match pair.split_once('=') {
            Some((name, _)) if secret(pair) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out.into()
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_lines(rx: Receiver<Message>, out: Box<dyn Write + Send>, path: Option<PathBuf>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(mut message) = rx.recv() {
        loop {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Message::Sync(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
                Message::Reopen => {
                    let _ = out.flush();
                    match path.as_deref().map(open_append) {
                        Some(Ok(file)) => {
                            out = std::io::BufWriter::with_capacity(64 * 1024, Box::new(file));
                            tracing::info!("access log reopened");
                        }
                        Some(Err(e)) => {
                            tracing::error!(
                                "cannot reopen the access log, writing on to the old file: {e}"
                            )
                        }
                        None => {}
                    }
                }
            }
            match rx.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        let _ = out.flush();
        std::thread::sleep(WRITE_BATCH_PAUSE);
    }
}

fn httplog_line(r: &AccessRecord<'_>) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(256);
    match r.client {
        Some(addr) => {
            let _ = write!(line, "{}:{}", addr.ip(), addr.port());
        }
        None => line.push('-'),
    }
    let _ = writeln!(
        line,
        " [{}] {} {} {}/{} {}/{}/{} {} {} {}{} {} \"{} {} {}\" {} {}",
        haproxy_date(r.time),
        r.listener,
        r.route,
        r.pool,
        r.server,
        r.connect_ms,
        r.response_ms,
        r.total_ms,
        r.status,
        r.bytes,
        r.termination[0],
        r.termination[1],
        r.retries,
        r.method,
        r.uri,
        r.version,
        r.request_id,
        r.tenant,
    );
    line
}

fn json_line(r: &AccessRecord<'_>) -> String {
    #[derive(Serialize)]
    struct Json<'a> {
        time: String,
        #[serde(flatten)]
        record: &'a AccessRecord<'a>,
        termination: String,
    }
    let json = Json {
        time: rfc3339(r.time),
        record: r,
        termination: r.termination.iter().collect(),
    };
    let mut line = serde_json::to_string(&json).unwrap_or_default();
    line.push('\n');
    line
}

/// `time` in UTC, as jiff reads it (a time before 1970 or past jiff's range
/// is logged as the epoch rather than failing the line).
fn utc(time: SystemTime) -> jiff::Zoned {
    jiff::Timestamp::try_from(time)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC)
}

/// `22/Nov/2026:01:23:45.678`, as in HAProxy's `%tr`. The part up to the
/// second is formatted once per second per thread.
fn haproxy_date(time: SystemTime) -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            *second = since.as_secs();
            *text = utc(time).strftime("%d/%b/%Y:%H:%M:%S").to_string();
        }
        format!("{text}.{:03}", since.subsec_millis())
    })
}

fn rfc3339(time: SystemTime) -> String {
    utc(time).strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The protocol as HAProxy's log writes it.
pub fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_795_397_025_678),
            client: Some("10.0.0.1:5555".parse().expect("addr")),
            listener: "http",
            route: "api",
            pool: "web",
            server: "127.0.0.1:8000",
            connect_ms: 1,
            response_ms: 12,
            total_ms: 15,
            status: 200,
            bytes: 512,
            termination: ['-', '-'],
            retries: 0,
            method: "GET",
            uri: "/v1/models",
            version: "HTTP/1.1",
            request_id: "abc",
            tenant: "acme",
        }
    }

    #[test]
    fn httplog_line_has_haproxy_fields_in_order() {
        assert_eq!(
            httplog_line(&record()),
            "10.0.0.1:5555 [23/Nov/2026:01:23:45.678] http api web/127.0.0.1:8000 1/12/15 200 512 -- 0 \"GET /v1/models HTTP/1.1\" abc acme\n"
        );
    }

    #[test]
    fn json_line_is_one_object_per_line() {
        let line = json_line(&record());
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(v["time"], "2026-11-23T01:23:45.678Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["termination"], "--");
        assert_eq!(v["client"], "10.0.0.1:5555");
    }

    #[test]
    fn credentials_in_the_query_are_redacted() {
        assert_eq!(
            redact_credentials("/v1/x?model=a&api_key=sk-123&KEY=abc&n=1"),
            "/v1/x?model=a&api_key=REDACTED&KEY=REDACTED&n=1"
        );
        assert_eq!(redact_credentials("/p?token=t"), "/p?token=REDACTED");
        assert!(matches!(
            redact_credentials("/p?monkey=1&keys=2"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(redact_credentials("/plain"), "/plain");
    }
}
