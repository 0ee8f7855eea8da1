//! Upstream failures: retries before the first byte (and never after), each
//! timeout, the 502/503/504 answers, and streams passing through chunk by
//! chunk.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn a_server_that_closes_before_answering_is_retried_on_another() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "retries: 1").await;
    let c = client();
    // Round robin starts at a; the fault header makes every server close, so
    // both are tried and the client gets a 502 after exactly one retry.
    let r = c
        .get(obleth.url("/echo"))
        .header("x-mock-fault", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(a.requests() + b.requests(), 2, "one try and one retry");
    assert_eq!(
        obleth
            .metric("obleth_upstream_retries_total{pool=\"p\"}")
            .await,
        1.0
    );

    // A server that fails only this once (here: it went away) is replaced by
    // the other one and the client sees a normal answer.
    a.stop();
    for _ in 0..4 {
        let r = c.get(obleth.url("/bench")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r), "b");
    }
}

#[tokio::test]
async fn post_is_not_retried_after_reaching_a_server_unless_allowed() {
    let (a, b) = (mock("a").await, mock("b").await);
    for (extra, expected_requests) in [
        ("retries: 1", 1),
        ("retries: 1\nretry_non_idempotent: true", 2),
    ] {
        let before = a.requests() + b.requests();
        let config = format!("pools:\n{}{}", pool("p", &[&a, &b], extra), catch_all("p"));
        let obleth = Obleth::start(&config).await;
        let r = client()
            .post(obleth.url("/echo"))
            .header("x-mock-fault", "close")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(
            a.requests() + b.requests() - before,
            expected_requests,
            "{extra}"
        );
    }
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
    assert_eq!(
        obleth
            .metric("obleth_upstream_retries_total{pool=\"p\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn no_server_left_answers_503_with_retry_after() {
    let a = mock("a").await;
    a.set_healthy(false);
    let config = format!(
        "pools:\n{}{}",
        pool(
            "p",
            &[&a],
            "health_check: { path: /health, interval: 50ms, rise: 1, fall: 1 }"
        ),
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client().get(obleth.url("/bench")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(r.text().await.unwrap(), "503 Service Unavailable\n");
            break;
        }
        assert!(Instant::now() < deadline, "never ejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn read_timeout_waiting_for_the_response_head_is_a_504() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "retries: 0\ntimeouts: { read: 300ms }").await;
    let started = Instant::now();
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-latency-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-latency-ms", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a response inside the timeout passes");
    let lines = obleth.access_lines(2).await;
    assert!(
        lines[0].contains(" 504 ") && lines[0].contains(" sH "),
        "{lines:?}"
    );
}

#[tokio::test]
async fn idle_read_between_body_chunks_cuts_a_stalled_body() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "retries: 0\ntimeouts: { read: 300ms }").await;
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-fault", "slow-body-ms:1000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the stalled body is cut");
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-fault", "slow-body-ms:100")
        .send()
        .await
        .unwrap();
    assert!(
        r.bytes().await.is_ok(),
        "gaps shorter than the timeout pass"
    );
}

#[tokio::test]
async fn total_timeout_bounds_a_slowly_trickling_response() {
    let a = mock("a").await;
    let config = format!(
        "pools:\n{}{}",
        pool(
            "p",
            &[&a],
            "retries: 0\ntimeouts: { read: 2s, total: 700ms }"
        ),
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    let started = Instant::now();
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-fault", "slow-body-ms:400")
        .send()
        .await
        .unwrap();
    assert!(
        r.bytes().await.is_err(),
        "the body is cut at the total timeout"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Response head arriving after `total` is answered with a 504.
    let r = client()
        .get(obleth.url("/echo"))
        .header("x-mock-latency-ms", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
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
    let config = format!(
        "pools:\n  - name: p\n    retries: 0\n    timeouts: {{ connect: 300ms }}\n    servers: [{{ address: '{addr}' }}]\n{}",
        catch_all("p")
    );
    let obleth = Obleth::start(&config).await;
    let started = Instant::now();
    let r = client().get(obleth.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(listener);
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
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
    let mut stream = r.bytes_stream();
    let mut first_chunk_at = None;
    let mut chunks = 0;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        first_chunk_at.get_or_insert_with(|| started.elapsed());
        chunks += 1;
        body.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let first = first_chunk_at.expect("some data");
    assert!(
        total >= Duration::from_millis(1400),
        "15 tokens at 10/s: {total:?}"
    );
    assert!(
        first < Duration::from_millis(500),
        "first bytes before the upstream finished: {first:?}"
    );
    assert!(chunks >= 10, "delivered incrementally, got {chunks} chunks");
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.matches("\"delta\":{\"content\"").count(), 15);
    assert!(text.contains("\"usage\":{") && text.ends_with("data: [DONE]\n\n"));
}
