//! LLM requests with multi-megabyte bodies (long documents, RAG contexts,
//! base64 images): what reaches the upstream, retries, the `max_body` limit,
//! and the process-wide bound on buffered bodies.

mod budget_common;
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "obk_large_0123456789abcdefgh";
const MIB: usize = 1 << 20;

/// One tenant and key for model `m` on pool `p` of `servers`, behind an LLM
/// route with `llm` settings and `extra` top-level sections.
fn config(servers: &[String], pool_extra: &str, llm: &str, extra: &str) -> String {
    let servers: String = servers
        .iter()
        .map(|s| format!("      - address: {s}\n"))
        .collect();
    format!(
        "pools:\n  - name: p\n    servers:\n{servers}{pool_extra}{extra}\
         seed:\n  tenants: [{{ name: acme }}]\n  models: [{{ name: m, pool: p }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {KEY} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {llm}\n"
    )
}

/// The mock's digest of what it received.
fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A chat request whose one message is about `size` bytes of words.
fn long_document(size: usize) -> Bytes {
    let text = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    Bytes::from(
        serde_json::to_vec(&json!({
            "model": "m",
            "max_tokens": 5,
            "messages": [{ "role": "user", "content": text }],
        }))
        .expect("JSON"),
    )
}

/// A chat request with a text part and a base64 image part of about `size`
/// bytes, laid out as clients send it (`model` last, spaces after colons).
fn image_message(size: usize) -> Bytes {
    let pixels: String = (0..size)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64] as char
        })
        .collect();
    Bytes::from(format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": [\
         {{\"type\": \"text\", \"text\": \"What is in this picture?\"}}, \
         {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,{pixels}\"}}}}]}}], \
         \"max_tokens\": 3, \"model\": \"m\"}}"
    ))
}

async fn post_raw(obleth: &Obleth, body: Bytes) -> reqwest::Response {
    chat_request(obleth, KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("obleth answers")
}

fn received(resp: &reqwest::Response) -> (usize, String) {
    (
        header_text(resp, "x-mock-received-bytes")
            .parse()
            .unwrap_or(0),
        header_text(resp, "x-mock-received-fnv1a"),
    )
}

#[tokio::test]
async fn five_and_twenty_mib_bodies_reach_the_upstream_byte_identical() {
    let upstream = mock("u").await;
    let obleth = Obleth::start(&config(&[upstream.addr.to_string()], "", "{}", "")).await;
    for body in [long_document(5 * MIB), image_message(20 * MIB)] {
        let resp = post_raw(&obleth, body.clone()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            received(&resp),
            (body.len(), fnv1a(&body)),
            "the upstream got the client's bytes"
        );
        let answer: Value = resp.json().await.expect("JSON");
        assert!(
            answer["usage"]["prompt_tokens"].as_u64() > Some(0),
            "{answer}"
        );
        assert!(
            answer["usage"]["completion_tokens"].as_u64() > Some(0),
            "{answer}"
        );
    }

    // Streamed, obleth asks for the usage event: the body changes by that
    // field alone, and the usage still comes back.
    let mut streamed: Value = serde_json::from_slice(&long_document(5 * MIB)).expect("JSON");
    streamed["stream"] = json!(true);
    let resp = post_chat(&obleth, KEY, &streamed).await;
    assert_eq!(resp.status(), 200);
    let (len, _) = received(&resp);
    let sent = serde_json::to_vec(&streamed).expect("JSON").len();
    assert_eq!(
        len,
        sent + r#""stream_options":{"include_usage":true},"#.len()
    );
    let text = resp.text().await.expect("stream");
    assert!(
        text.contains("data: [DONE]"),
        "{}",
        &text[..text.len().min(300)]
    );

    // Chunked, with no length declared.
    let body = long_document(3 * MIB);
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = chat_request(&obleth, KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .expect("obleth answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(received(&resp), (body.len(), fnv1a(&body)));
}

/// A server that reads each request whole, notes its length, and closes the
/// connection without answering: the attempt fails after the body was sent.
async fn swallowing_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address").to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        let _ = tx.send(seen.len() - end - 4);
                        return; // closes without a response
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_retry_to_another_server_sends_the_whole_body_again() {
    let upstream = mock("good").await;
    let (swallower, mut swallowed) = swallowing_server().await;
    let obleth = Obleth::start(&config(
        &[swallower, upstream.addr.to_string()],
        "    retries: 1\n    retry_non_idempotent: true\n",
        "{}",
        "",
    ))
    .await;
    let body = long_document(3 * MIB);
    // Round robin: one of two requests goes to the swallowing server first.
    for _ in 0..2 {
        let resp = post_raw(&obleth, body.clone()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(received(&resp), (body.len(), fnv1a(&body)));
    }
    let mut failed_attempts = Vec::new();
    while let Ok(len) = swallowed.try_recv() {
        failed_attempts.push(len);
    }
    assert!(
        !failed_attempts.is_empty(),
        "an attempt went to the failing server"
    );
    assert!(
        failed_attempts.iter().all(|len| *len == body.len()),
        "the failed attempts got all of it too: {failed_attempts:?}"
    );
    assert_eq!(
        obleth
            .metric("obleth_upstream_retries_total{pool=\"p\"}")
            .await,
        failed_attempts.len() as f64
    );
}

#[tokio::test]
async fn a_body_over_max_body_is_refused_before_the_upstream_is_contacted() {
    let upstream = mock("u").await;
    let obleth = Obleth::start(&config(
        &[upstream.addr.to_string()],
        "",
        "{ max_body: 1MiB }",
        "",
    ))
    .await;
    // A declared length over the limit is answered before a byte is sent.
    let mut conn = tokio::net::TcpStream::connect(obleth.http)
        .await
        .expect("connects");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        2 * MIB
    );
    conn.write_all(head.as_bytes()).await.expect("writes");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");

    // Chunked: refused once it passes the limit, not after it was all read.
    let endless = futures_util::stream::iter(
        std::iter::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024])))
            .take(1024),
    );
    let resp = chat_request(&obleth, KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(endless))
        .send()
        .await;
    // The client may see the 413, or the connection closed under its upload.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    assert_eq!(upstream.requests(), 0, "the upstream never saw them");
    let resp = post_raw(&obleth, long_document(MIB / 2)).await;
    assert_eq!(resp.status(), 200, "a body under the limit is served");
}

/// Peak and current resident memory of process `pid`, in bytes.
fn memory(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test]
async fn many_large_bodies_at_once_get_503_and_memory_stays_bounded() {
    let upstream = mock("u").await;
    let limit = 48 * MIB;
    let obleth = Obleth::start(&config(
        &[upstream.addr.to_string()],
        "",
        "{}",
        "admission: { max_buffered_body: 48MiB }\n",
    ))
    .await;
    let resp = post_raw(&obleth, long_document(1024)).await;
    assert_eq!(resp.status(), 200);
    let (_, before) = memory(obleth.pid());

    // Six 20 MiB bodies, each held 2.5 s upstream: two fit in 48 MiB.
    let body = image_message(20 * MIB);
    let sends = (0..6).map(|_| {
        chat_request(&obleth, KEY)
            .header("content-type", "application/json")
            .header("x-mock-latency-ms", "2500")
            .body(body.clone())
            .send()
    });
    let results = futures_util::future::join_all(sends).await;
    let mut statuses = Vec::new();
    for resp in results {
        let resp = resp.expect("answered");
        let status = resp.status().as_u16();
        if status == 503 {
            assert_eq!(
                resp.headers().get("retry-after").map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
            let answer: Value = resp.json().await.expect("JSON");
            assert_eq!(answer["error"]["code"], "body_buffer_full", "{answer}");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);

    // The two bodies held, plus a margin for the allocator and the
    // transient buffers of reading and writing them.
    let (peak, _) = memory(obleth.pid());
    let margin = 32 * MIB;
    eprintln!(
        "peak RSS grew by {} MiB with a {} MiB buffer limit",
        peak.saturating_sub(before) / MIB,
        limit / MIB
    );
    assert!(
        peak.saturating_sub(before) < limit + margin,
        "peak RSS grew by {} MiB; the limit is {} MiB plus a {} MiB margin",
        peak.saturating_sub(before) / MIB,
        limit / MIB,
        margin / MIB
    );

    // Room comes back when the calls end.
    let resp = post_raw(&obleth, body).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_http2_client_sends_large_bodies_on_one_connection() {
    let upstream = mock("u").await;
    let listener = format!("listeners:\n  - name: h2c\n    address: {LISTEN}\n    h2c: true\n");
    let obleth = Obleth::start(&config(&[upstream.addr.to_string()], "", "{}", &listener)).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for size in [5 * MIB, 100, 3 * MIB] {
        let body = long_document(size);
        let resp = h2
            .post(obleth.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(received(&resp), (body.len(), fnv1a(&body)));
        let answer: Value = resp.json().await.expect("JSON");
        assert!(
            answer["usage"]["total_tokens"].as_u64() > Some(0),
            "{answer}"
        );
    }
}
