//! The client side of HTTP/1.1 as a hostile or careless client drives it,
//! over raw sockets against the real binary: Host rules, pipelined
//! requests, head deadlines, oversized heads and obleth's own error
//! answers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` and reads until the peer closes or `limit` passes.
async fn exchange(obleth: &Obleth, bytes: &[u8], limit: Duration) -> String {
    raw_exchange(obleth.http, bytes, limit).await
}

#[tokio::test]
async fn host_is_required_on_http_1_1_and_supplied_for_http_1_0() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    let limit = Duration::from_secs(5);

    let missing = exchange(&obleth, b"GET /echo HTTP/1.1\r\n\r\n", limit).await;
    assert!(missing.starts_with("HTTP/1.1 400 "), "{missing}");
    assert!(missing.contains("no Host header"), "{missing}");
    assert!(
        missing.to_ascii_lowercase().contains("connection: close"),
        "{missing}"
    );
    let twice = exchange(
        &obleth,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        limit,
    )
    .await;
    assert!(twice.starts_with("HTTP/1.1 400 "), "{twice}");
    assert_eq!(upstream.requests(), 0, "neither reached the upstream");

    // HTTP/1.0 may omit Host: the upstream still gets one.
    let old = exchange(&obleth, b"GET /echo HTTP/1.0\r\n\r\n", limit).await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    let host = format!("\"host\":\"{}\"", upstream.addr);
    assert!(old.contains(&host), "{old}");
}

/// obleth in front of `upstream` on a listener with short client limits.
async fn strict_listener(upstream: &MockUpstream) -> (Obleth, SocketAddr) {
    let obleth = Obleth::start(&format!(
        "listeners:
  - name: http
    address: {LISTEN}
    timeouts: {{ http_request: 1s, client: 1s, http_keep_alive: 2s }}
    min_body_rate: 1024
pools:\n{}{}",
        pool("p", &[upstream], ""),
        catch_all("p")
    ))
    .await;
    let addr = obleth.http;
    (obleth, addr)
}

/// Sends `parts` one after another with `pause` between them, then reads
/// what comes back; returns it and when the connection closed.
async fn trickle(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for part in parts {
        if stream.write_all(part).await.is_err() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let text = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    (text, started.elapsed())
}

/// Connections obleth closed for `reason` so far.
async fn closed_for(obleth: &Obleth, reason: &str) -> f64 {
    let sample = format!("obleth_connections_closed_total{{reason=\"{reason}\"}}");
    obleth.metric(&sample).await
}

/// Sends `bytes` in one write, then reads as [`trickle`] does.
async fn send_at_once(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    trickle(addr, &[bytes], Duration::ZERO).await
}

#[tokio::test]
async fn a_request_head_sent_slowly_is_cut_at_the_head_deadline() {
    let upstream = mock("web").await;
    let (obleth, addr) = strict_listener(&upstream).await;
    let header: &[u8] = b"x-slow: 1\r\n";
    let mut parts: Vec<&[u8]> = vec![b"GET /echo HTTP/1.1\r\nHost: a\r\n"];
    parts.extend(std::iter::repeat_n(header, 40));
    let (text, closed) = trickle(addr, &parts, Duration::from_millis(250)).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed < Duration::from_secs(8), "closed after {closed:?}");

    // On a kept-alive connection the deadline runs again for the next head.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut answer = String::new();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    for _ in 0..40 {
        if stream.write_all(header).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(upstream.requests(), 1);
    assert!(closed_for(&obleth, "head_timeout").await >= 2.0);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let upstream = mock("web").await;
    let (_obleth, addr) = strict_listener(&upstream).await;
    let (text, closed) = send_at_once(addr, b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed < Duration::from_secs(8), "idle for {closed:?}");
}

#[tokio::test]
async fn a_request_body_sent_slowly_or_not_at_all_gets_408() {
    let upstream = mock("web").await;
    let (obleth, addr) = strict_listener(&upstream).await;
    // A trickle: 16 bytes every 250 ms is far below 1 KiB/s.
    let chunk: &[u8] = &[b'x'; 16];
    let mut parts: Vec<&[u8]> =
        vec![b"POST /echo HTTP/1.1\r\nHost: a\r\ncontent-length: 4096\r\n\r\n"];
    parts.extend(std::iter::repeat_n(chunk, 60));
    let (text, closed) = trickle(addr, &parts, Duration::from_millis(250)).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed < Duration::from_secs(10), "closed after {closed:?}");
    // A body that stops: the client timeout (1 s) ends it.
    let stopped = b"POST /echo HTTP/1.1\r\nHost: a\r\ncontent-length: 100\r\n\r\n0123456789";
    let (text, closed) = send_at_once(addr, stopped).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(closed < Duration::from_secs(8), "closed after {closed:?}");
    assert!(closed_for(&obleth, "slow_body").await >= 1.0);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    let text = exchange(
        &obleth,
        b"GET /echo/p0 HTTP/1.1\r\nHost: a\r\n\r\n\
GET /echo/p1 HTTP/1.1\r\nHost: a\r\n\r\n\
GET /echo/p2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 3, "{text}");
    let at = |p: &str| text.find(&format!("\"path\":\"/echo/{p}\"")).expect(p);
    assert!(at("p0") < at("p1") && at("p1") < at("p2"), "{text}");
    // Only the last answer, after which the connection closes, says so.
    let lower = text.to_ascii_lowercase();
    assert_eq!(lower.matches("connection: close").count(), 1, "{text}");
    assert!(
        lower.find("connection: close").unwrap() > at("p1"),
        "{text}"
    );
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_a_large_one_passes() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    let head = |value_len: usize| {
        format!(
            "GET /echo HTTP/1.1\r\nHost: a\r\nx-big: {}\r\nConnection: close\r\n\r\n",
            "v".repeat(value_len)
        )
    };
    let limit = Duration::from_secs(10);
    for (kib, status) in [(60, "200"), (70, "431"), (1100, "431")] {
        let text = exchange(&obleth, head(kib * 1024).as_bytes(), limit).await;
        let start = &text[..text.len().min(200)];
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{start}");
    }
    assert_eq!(upstream.requests(), 1);
    assert!(closed_for(&obleth, "head_too_large").await >= 2.0);
}

#[tokio::test]
async fn requests_pingora_refuses_get_obleths_answer_without_a_banner() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    let limit = Duration::from_secs(5);
    for (request, status) in [
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n"[..],
            "400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "400",
        ),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "405"),
    ] {
        let text = exchange(&obleth, request, limit).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(!text.to_ascii_lowercase().contains("pingora"), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.starts_with(status), "{text}");
    }
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn an_h2c_connection_is_not_held_to_http1_head_rules() {
    let upstream = mock("web").await;
    let obleth = Obleth::start(&format!(
        "listeners:
  - name: h2c
    address: {LISTEN}
    h2c: true
    timeouts: {{ http_request: 1s }}
    max_head_bytes: 1024
pools:\n{}{}",
        pool("p", &[&upstream], ""),
        catch_all("p")
    ))
    .await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    // One connection, idle longer than the head deadline between requests
    // and carrying more than `max_head_bytes` of frames.
    let big = "v".repeat(2000);
    for round in 0..3 {
        let resp = c
            .get(obleth.url("/echo"))
            .header("x-big", &big)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200, "round {round}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(upstream.connections(), 1, "one upstream connection reused");
}
