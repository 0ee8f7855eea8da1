//! Requests written to break the listener: smuggling by conflicting body
//! framing, forbidden bytes in the head, unusual request targets, and bodies
//! meant to exhaust memory or admission slots. Each case has its expected
//! outcome, asserted over a raw socket against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` and reads until the peer closes or two seconds pass.
async fn exchange(obleth: &Obleth, bytes: &[u8]) -> String {
    raw_exchange(obleth.http, bytes, Duration::from_secs(2)).await
}

/// The status line of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// What the upstream's `/echo` reported receiving, when the request reached it.
fn echoed(text: &str) -> Option<serde_json::Value> {
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

/// Lets a request that was refused have reached the upstream if it was
/// going to, so a count taken after it is final.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn conflicting_body_framing_is_refused_or_forwarded_one_way_only() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;

    // Content-Length and Transfer-Encoding together: chunked wins, the
    // length is not forwarded, and the connection is closed after the
    // answer, so the bytes after the chunked body are never a request.
    let text = exchange(
        &obleth,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    let seen = echoed(&text).expect("the echo");
    assert_eq!(seen["body_len"], 0);
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");
    assert!(seen["headers"].get("content-length").is_none(), "{seen}");
    let text = exchange(
        &obleth,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    let seen = echoed(&text).expect("the echo");
    assert_eq!(seen["body_len"], 5);
    assert!(seen["headers"].get("content-length").is_none(), "{seen}");
    settle().await;
    assert_eq!(
        upstream.requests(),
        2,
        "the smuggled request never reached it"
    );

    // Lengths that disagree, or that are not a plain number: 400, and the
    // upstream sees nothing.
    for bad in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        // Codings obleth cannot frame by: not chunked, or chunked not last.
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let text = exchange(&obleth, bad).await;
        assert_eq!(statuses(&text), [400], "{}: {text}", String::from_utf8_lossy(bad));
    }
    settle().await;
    assert_eq!(upstream.requests(), 2, "none of them reached the upstream");

    // Equal duplicates and chunked as the last coding are one framing.
    for fine in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let text = exchange(&obleth, fine).await;
        assert_eq!(statuses(&text), [200], "{}: {text}", String::from_utf8_lossy(fine));
        assert_eq!(echoed(&text).expect("the echo")["body_len"], 5);
    }

    // A chunk size that is not hex, or overflows: 400 and the connection
    // is closed (the upstream may have seen the head of the request, never
    // a second one).
    for bad in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let text = exchange(&obleth, bad).await;
        assert_eq!(statuses(&text), [400], "{text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
        assert!(!text.contains("/smuggled"), "{text}");
    }
}

#[tokio::test]
async fn forbidden_bytes_in_the_head_are_refused_before_the_upstream() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    for bad in [
        &b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"[..],
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
    ] {
        let text = exchange(&obleth, bad).await;
        assert_eq!(
            statuses(&text),
            [400],
            "{:?}: {text}",
            String::from_utf8_lossy(bad)
        );
    }
    settle().await;
    assert_eq!(upstream.requests(), 0);
    // A NUL in the target never reaches the upstream raw: it goes as
    // `%00`, exactly as if the client had encoded it.
    let text = exchange(&obleth, b"GET /echo/\x00ho HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        echoed(&text).expect("the echo")["path"],
        "/echo/%00ho",
        "{text}"
    );
}

#[tokio::test]
async fn unusual_request_targets_get_their_documented_answers() {
    let upstream = mock("web").await;
    let obleth = proxy_to(&[&upstream], "").await;
    // Absolute form naming the Host: proxied by its path.
    let text = exchange(
        &obleth,
        b"GET http://a/echo?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    let seen = echoed(&text).expect("the echo");
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/echo"), Some("q=1"))
    );
    // Absolute form naming another host than Host: which one is meant is
    // ambiguous, so neither is trusted.
    let text = exchange(
        &obleth,
        b"GET http://evil.example/echo HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), [400], "{text}");
    // obleth is not a forward proxy: CONNECT is refused.
    let text = exchange(&obleth, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await;
    assert_eq!(statuses(&text), [405], "{text}");
    settle().await;
    assert_eq!(upstream.requests(), 1);
}

const KEY: &str = "obk_hostile_0123456789abcdefgh";

/// An LLM route for model `m` (one request at a time) on `upstream`, and a
/// plain route under `/plain/` to `sink`.
fn llm_and_plain(upstream: &MockUpstream, sink: &str) -> String {
    format!(
        "pools:\n{}  - name: sink\n    servers: [{{ address: '{sink}' }}]\n\
         seed:\n  tenants: [{{ name: acme }}]\n  models: [{{ name: m, pool: p, max_in_flight: 1 }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n\
         \x20 - name: plain\n    match: {{ path: {{ prefix: /plain/ }} }}\n    proxy: {{ pool: sink }}\n",
        pool("p", &[upstream], "")
    )
}

/// An upstream that reads each request's declared body and throws it
/// away, answering `200 ok`: what a bulk-upload endpoint does.
async fn discarding_server() -> String {
    fixed_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
}

/// An upstream that reads each request (head and declared body) and
/// answers every one with `answer`.
async fn fixed_server(answer: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let mut left: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut buf = vec![0u8; 1 << 20];
                while left > 0 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left = left.saturating_sub(n as u64),
                    }
                }
                let _ = conn.write_all(answer).await;
            });
        }
    });
    addr
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_slow_body_on_an_llm_route_holds_no_admission_slot() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&llm_and_plain(&upstream, "127.0.0.1:9")).await;
    // The model takes one request at a time; this one sends its body at a
    // crawl and is never admitted while it does.
    let mut slow = TcpStream::connect(obleth.http).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{\"model\":\"m\","
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let resp = client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "model": "m", "messages": [], "max_tokens": 2 }))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served at once, not after the slow body: {:?}",
        started.elapsed()
    );
    drop(slow);
}

#[tokio::test]
async fn a_gigabyte_body_is_refused_by_an_llm_route_and_streamed_through_a_plain_one() {
    let upstream = mock("vllm").await;
    let sink = discarding_server().await;
    let obleth = Obleth::start(&llm_and_plain(&upstream, &sink)).await;
    const GIB: u64 = 1 << 30;

    // LLM route: the declared length is over max_body, answered before a
    // byte of the body is read.
    let mut conn = TcpStream::connect(obleth.http).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {GIB}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("answered at once")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    drop(conn);

    // Plain route: streamed through with memory that does not grow with it.
    let before = peak_rss(obleth.pid());
    let mut conn = TcpStream::connect(obleth.http).await.expect("connect");
    let head = format!("POST /plain/upload HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("write");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..(GIB >> 20) {
        conn.write_all(&chunk).await.expect("obleth takes the body");
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let grew = peak_rss(obleth.pid()).saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB streaming 1 GiB", grew >> 20);
    assert!(grew < 64 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

#[tokio::test]
async fn an_upstream_reporting_absurd_usage_is_charged_without_overflow() {
    const BODY: &str = concat!(
        r#"{"id":"x","object":"chat.completion","model":"m","choices":[],"#,
        r#""usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}"#
    );
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let upstream = fixed_server(answer.leak().as_bytes()).await;
    let config = format!(
        "pools:\n  - name: p\n    servers: [{{ address: '{upstream}' }}]\n\
         seed:\n  tenants: [{{ name: acme, budget_tokens: 1000 }}]\n  models: [{{ name: m, pool: p }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    llm: {{}}\n"
    );
    let obleth = Obleth::start(&config).await;
    let status = |resp: reqwest::Result<reqwest::Response>| match resp {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("{e}\n{}", obleth.stderr()),
    };
    let chat = two_token_chat("m");
    let first = status(chat_request(&obleth, KEY).json(&chat).send().await);
    assert_eq!(first, 200, "the client gets the upstream's answer");
    let second = status(chat_request(&obleth, KEY).json(&chat).send().await);
    assert_eq!(
        second, 403,
        "the term budget is spent, not wrapped around to a small number"
    );
    assert!(!obleth.stderr().contains("panicked"), "{}", obleth.stderr());
}
