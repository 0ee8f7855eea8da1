//! Upstream failures: retries before the first byte (and never after, and
//! never of an answer), each timeout, the 502/503/504 answers, and streams
//! passing through chunk by chunk.

mod common;
mod edge_kit;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use edge_kit::*;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

const RETRIES: &str = "obleth_upstream_retries_total{pool=\"p\"}";

/// What `request` gave and how long it took to give it.
async fn timed<T>(request: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    (request.await, started.elapsed())
}

/// Asserts access log line `at` of `lines` has every one of `parts`.
fn assert_logged(lines: &[String], at: usize, parts: &[&str]) {
    for part in parts {
        assert!(
            lines[at].contains(part),
            "no {part:?} in line {at}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_closes_before_answering_is_retried_on_another() {
    // Only the first server closes; round robin tries it first.
    let closer = ClosingServer::start().await;
    let b = mock("b").await;
    let obleth = Obleth::start(&pool_of(
        &[closer.addr.to_string(), b.addr.to_string()],
        "retries: 1",
    ))
    .await;
    let c = client();
    let r = c.get(obleth.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the retry's answer reaches the client");
    assert_eq!(served_by(&r), "b", "the retry went to the other server");
    assert_eq!((closer.requests(), b.requests()), (1, 1));
    assert_eq!(obleth.metric(RETRIES).await, 1.0);

    // When the other server closes too, each is tried once (never one
    // twice) and the client gets a 502 after exactly one retry.
    let r = get_with(&obleth, "/echo", ("x-mock-fault", "close")).await;
    assert_eq!(r.status(), 502);
    assert_eq!((closer.requests(), b.requests()), (2, 2));
    assert_eq!(obleth.metric(RETRIES).await, 2.0);
    let lines = obleth.access_lines(2).await;
    assert!(
        lines[0].contains(&format!(" p/{} ", b.addr))
            && lines[0].contains(" 200 ")
            && lines[0].contains(" -- 1 \"GET /echo HTTP/1.1\""),
        "the log names the server that answered and one retry: {lines:?}"
    );
}

#[tokio::test]
async fn post_is_not_retried_after_reaching_a_server_unless_allowed() {
    let closer = ClosingServer::start().await;
    let b = mock("b").await;
    let servers = [closer.addr.to_string(), b.addr.to_string()];
    for (extra, status, closer_seen, b_seen) in [
        ("retries: 1", 502, 1, 0),
        ("retries: 1\nretry_non_idempotent: true", 200, 2, 1),
    ] {
        let obleth = Obleth::start(&pool_of(&servers, extra)).await;
        let r = client()
            .post(obleth.url("/echo"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{extra}");
        if status == 200 {
            assert_eq!(served_by(&r), "b");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["body_len"], 7, "the body was replayed");
        }
        assert_eq!(
            (closer.requests(), b.requests()),
            (closer_seen, b_seen),
            "{extra}"
        );
    }
}

#[tokio::test]
async fn upstream_5xx_answers_are_passed_through_and_never_retried() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "retries: 2\nretry_non_idempotent: true").await;
    let c = client();
    for (i, status) in [500u16, 502, 503, 504, 500].into_iter().enumerate() {
        let req = if i % 2 == 0 {
            c.get(obleth.url("/echo"))
        } else {
            c.post(obleth.url("/echo")).body("x")
        };
        let r = req
            .header("x-mock-status", status.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        assert_ne!(served_by(&r), "-", "the server's own answer");
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(
            a.requests() + b.requests(),
            i as u64 + 1,
            "{status} retried"
        );
    }
    assert_eq!(obleth.metric(RETRIES).await, 0.0);
}

#[tokio::test]
async fn one_server_refusing_is_502_without_retries_503_with_them_and_503_while_ejected() {
    let refusing = Refusing::new();
    let server = refusing.addr.to_string();
    let obleth = Obleth::start(&format!(
        "pools:\n  - name: final\n    retries: 0\n    servers: [{{ address: '{server}' }}]\n\
         \x20 - name: retrying\n    retries: 1\n    servers: [{{ address: '{server}' }}]\n\
         routes:\n  - name: final\n    match: {{ path: {{ prefix: /final }} }}\n    proxy: {{ pool: final }}\n\
         \x20 - name: retrying\n    proxy: {{ pool: retrying }}\n"
    ))
    .await;
    let c = client();
    // retries: 0 — the refused connection is the answer: 502.
    let r = c.get(obleth.url("/final")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("retry-after").is_none());
    // obleth closes the connection after its own error answers, and says
    // so: the client's next request on this client must not hit a reset.
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.text().await.unwrap(), "502 Bad Gateway\n");
    // The refusal ejected the server (10 s without health checks): no
    // server left, 503 with Retry-After: 1 at once.
    let r = c.get(obleth.url("/final")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.text().await.unwrap(), "503 Service Unavailable\n");
    assert_eq!(
        obleth
            .metric("obleth_upstream_attempts_total{outcome=\"connect_error\",pool=\"final\"}")
            .await,
        1.0,
        "the ejected server was not tried again"
    );
    // retries: 1 — the retry finds no server left: 503.
    let r = c.get(obleth.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let lines = obleth.access_lines(3).await;
    assert_logged(&lines, 0, &[" 502 ", " SC "]);
    assert_logged(&lines, 1, &[" 503 ", " SC "]);
    assert_logged(&lines, 2, &[" 503 ", " SC 1 "]);
}

#[tokio::test]
async fn nothing_is_retried_once_the_response_has_started() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "retries: 3").await;
    let r = client()
        .post(obleth.url("/v1/chat/completions"))
        .header("x-mock-fault", "close-mid-body")
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":20}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the head was already forwarded");
    let body = r.bytes().await;
    assert!(
        body.is_err(),
        "the client sees the stream break, not a clean end"
    );
    assert_eq!(
        a.requests() + b.requests(),
        1,
        "no second attempt after the first byte"
    );
    assert_eq!(obleth.metric(RETRIES).await, 0.0);
}

#[tokio::test]
async fn no_server_left_answers_503_with_retry_after() {
    let a = mock("a").await;
    a.set_healthy(false);
    let check = "health_check: { path: /health, interval: 50ms, rise: 1, fall: 1 }";
    let obleth = proxy_to(&[&a], check).await;
    wait_sample(&obleth, &healthy("p", a.addr), 0.0).await;
    let r = client().get(obleth.url("/bench")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1", "the documented value");
    assert_eq!(r.text().await.unwrap(), "503 Service Unavailable\n");
    let lines = obleth.access_lines(1).await;
    assert!(
        lines[0].contains(" p/- ") && lines[0].contains(" SC "),
        "no server was chosen: {lines:?}"
    );
}

#[tokio::test]
async fn read_timeout_waiting_for_the_response_head_is_a_504() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "retries: 0\ntimeouts: { read: 1s }").await;
    // The server never answers: only the read timeout can end this.
    let (r, took) = timed(get_with(&obleth, "/echo", ("x-mock-fault", "hang"))).await;
    assert_eq!(r.status(), 504);
    assert!(
        took >= Duration::from_millis(950),
        "not before the timeout: {took:?}"
    );
    let r = get_with(&obleth, "/echo", ("x-mock-latency-ms", "50")).await;
    assert_eq!(r.status(), 200, "a response inside the timeout passes");
    let lines = obleth.access_lines(2).await;
    assert_logged(&lines, 0, &[" 504 ", " sH "]);
}

#[tokio::test]
async fn idle_read_between_body_chunks_cuts_a_stalled_body() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "retries: 0\ntimeouts: { read: 1s }").await;
    let r = get_with(&obleth, "/echo", ("x-mock-fault", "slow-body-ms:4000")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the stalled body is cut");
    let r = get_with(&obleth, "/echo", ("x-mock-fault", "slow-body-ms:100")).await;
    let body = r.bytes().await;
    assert!(body.is_ok(), "gaps shorter than the timeout pass");
}

#[tokio::test]
async fn total_timeout_bounds_a_slowly_trickling_response() {
    // Every gap (1.5 s) is inside `read` (5 s): only `total` can cut.
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "retries: 0\ntimeouts: { read: 5s, total: 1s }").await;
    let started = Instant::now();
    let r = get_with(&obleth, "/echo", ("x-mock-fault", "slow-body-ms:1500")).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "the body is cut at the total timeout"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // A response head arriving after `total` is answered with a 504.
    let r = get_with(&obleth, "/echo", ("x-mock-latency-ms", "2500")).await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn write_timeout_ends_a_request_the_server_does_not_read() {
    // The server accepts and never reads: once the socket buffers are full
    // obleth's next write waits, and only `write` ends it — without it the
    // write would wait for ever. After a failed write Pingora still listens
    // for an early answer from the server for up to `read`, so the 504
    // comes after write + read.
    let hole = Blackhole::start().await;
    let timeouts = "retries: 0\ntimeouts: { write: 300ms, read: 2s }";
    let obleth = Obleth::start(&pool_of(&[hole.addr.to_string()], timeouts)).await;
    let stream = tokio::net::TcpStream::connect(obleth.http).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    const BODY: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY}\r\n\r\n");
        tx.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..BODY / chunk.len() {
            tx.write_all(&chunk).await?;
        }
        std::io::Result::Ok(tx)
    });
    let status = tokio::time::timeout(DEADLINE, read_status(&mut rx))
        .await
        .expect("an answer before the deadline");
    assert_eq!(status, Some(504));
    assert_eq!(hole.accepted(), 1);
    writer.abort();
    let lines = obleth.access_lines(1).await;
    assert_logged(&lines, 0, &[" 504 ", " sH "]);
    assert!(
        obleth.stderr().contains("WriteTimedout"),
        "the write timed out: {}",
        obleth.stderr()
    );
}

#[tokio::test]
async fn connect_timeout_is_a_504() {
    // A listener whose accept queue is full drops further SYNs, so connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let timeouts = "retries: 0\ntimeouts: { connect: 300ms }";
    let obleth = Obleth::start(&pool_of(&[addr.to_string()], timeouts)).await;
    let (r, took) = timed(client().get(obleth.url("/")).send()).await;
    assert_eq!(r.unwrap().status(), 504);
    assert!(took >= Duration::from_millis(250));
    let lines = obleth.access_lines(1).await;
    assert!(lines[0].contains(" sC "), "{lines:?}");
    drop(listener);
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
    // The upstream writes each chunk only when the test says so, and the
    // test says so only once the previous chunk reached the client: a proxy
    // that held back any part of the body would stall this at the deadline.
    let upstream = SteppedStream::start().await;
    let obleth = Obleth::start(&pool_of(&[upstream.addr.to_string()], "")).await;
    let r = client().get(obleth.url("/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut received = Vec::new();
    for i in 0..5 {
        let event = format!("data: {{\"n\":{i}}}\n\n");
        upstream.chunks.send(Some(event.clone())).unwrap();
        while !received.ends_with(event.as_bytes()) {
            let chunk = tokio::time::timeout(DEADLINE, stream.next())
                .await
                .unwrap_or_else(|_| panic!("event {i} held back by the proxy"))
                .expect("the stream goes on")
                .expect("chunk");
            received.extend_from_slice(&chunk);
        }
    }
    upstream.chunks.send(None).unwrap();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("the end of the stream")
    {
        received.extend_from_slice(&chunk.expect("chunk"));
    }
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
}

#[tokio::test]
async fn an_sse_stream_from_the_mock_arrives_whole_and_paced() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "").await;
    let started = Instant::now();
    let r = client()
        .post(obleth.url("/v1/chat/completions"))
        .header("x-mock-tps", "10")
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":15,"stream_options":{"include_usage":true}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(r.bytes().await.expect("whole body").to_vec()).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "15 tokens at 10/s: {:?}",
        started.elapsed()
    );
    assert_eq!(text.matches("\"delta\":{\"content\"").count(), 15);
    assert!(text.contains("\"usage\":{") && text.ends_with("data: [DONE]\n\n"));
}
