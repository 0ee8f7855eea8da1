//! Speaks raw HTTP/1.1 to the mock, so what is checked is exactly what goes
//! over the wire (chunk boundaries, missing terminators, closed sockets).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use obleth_mock_upstream::{MockConfig, MockUpstream};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const READ_LIMIT: Duration = Duration::from_secs(5);

/// A response as read off the socket until the server closed it.
#[derive(Debug)]
struct Raw {
    /// Every byte received, head included.
    bytes: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    /// The body's HTTP chunks (chunked encoding), or the whole body as one.
    chunks: Vec<Vec<u8>>,
    /// Whether the body ended properly (terminating chunk, or the full
    /// `content-length`).
    complete: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap()
    }

    /// The `data:` payloads of the server-sent events, in order.
    fn events(&self) -> Vec<String> {
        let body = String::from_utf8(self.body()).unwrap();
        body.split_terminator("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    raw
}

/// Sends one request and reads until the server closes the connection (an
/// abort counts as a close: what was received is kept).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Raw {
    let mut stream = send(addr, &request(method, path, headers, body)).await;
    let bytes = read_until_closed(&mut stream).await;
    parse(bytes)
}

/// Connects and writes `raw`, for the tests that read the answer (or its
/// absence) themselves.
async fn send(addr: SocketAddr, raw: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    stream
}

/// A bodiless GET through [`exchange`].
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Raw {
    exchange(addr, "GET", path, headers, "").await
}

/// An 8-token chat completion (`stream`ed or not) that the mock cuts off
/// mid-body: the two `close-mid-body` tests start from it.
async fn cut_mid_body(mock: &MockUpstream, stream: bool) -> Raw {
    let fault = [("x-mock-fault", "close-mid-body")];
    post_chat(mock, &fault, chat_body(8, stream, false)).await
}

/// POSTs `body` (see [`chat_body`]) to the mock's chat completions: what
/// most tests here send.
async fn post_chat(mock: &MockUpstream, headers: &[(&str, &str)], body: String) -> Raw {
    exchange(mock.addr, "POST", "/v1/chat/completions", headers, &body).await
}

async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0; 8192];
    loop {
        match timeout(READ_LIMIT, stream.read(&mut buf))
            .await
            .expect("server never closed")
        {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return bytes,
            Err(err) => panic!("read failed: {err}"),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse(bytes: Vec<u8>) -> Raw {
    let head_end = find(&bytes, b"\r\n\r\n").expect("no complete response head");
    let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let mut raw = Raw {
        bytes: bytes.clone(),
        status,
        headers,
        chunks: Vec::new(),
        complete: false,
    };
    let mut rest = &bytes[head_end + 4..];
    if raw.header("transfer-encoding") == Some("chunked") {
        while let Some(line_end) = find(rest, b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if size == 0 {
                raw.complete = rest[line_end..].starts_with(b"\r\n\r\n");
                break;
            }
            let data = &rest[line_end + 2..];
            if data.len() < size + 2 {
                raw.chunks.push(data.to_vec());
                break;
            }
            raw.chunks.push(data[..size].to_vec());
            rest = &data[size + 2..];
        }
    } else {
        let length: usize = raw.header("content-length").unwrap().parse().unwrap();
        raw.complete = rest.len() == length;
        raw.chunks.push(rest.to_vec());
    }
    raw
}

async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        name: "alpha".into(),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn chat_body(max_tokens: u64, stream: bool, include_usage: bool) -> String {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "say hello to me"},
        ],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
    })
    .to_string()
}

/// Asserts a complete 200 answer of `content_type` from the `alpha` mock:
/// the head both plain and streamed chat completions must have.
fn assert_whole_answer(response: &Raw, content_type: &str) {
    assert_eq!(response.status, 200);
    assert!(response.complete);
    assert_eq!(response.header("x-mock-server"), Some("alpha"));
    assert_eq!(response.header("content-type"), Some(content_type));
}

#[tokio::test]
async fn chat_completion_reports_usage() {
    let mock = mock().await;
    let response = post_chat(&mock, &[], chat_body(5, false, false)).await;
    assert_whole_answer(&response, "application/json");
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-test");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // 2 + 4 words, plus 3 per message.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
    );
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn stream_sends_one_event_per_token() {
    let mock = mock().await;
    let response = post_chat(&mock, &[], chat_body(4, true, false)).await;
    assert_whole_answer(&response, "text/event-stream");
    // Each event travels in its own HTTP chunk.
    for chunk in &response.chunks {
        let chunk = std::str::from_utf8(chunk).unwrap();
        assert!(
            chunk.starts_with("data: ") && chunk.ends_with("\n\n"),
            "{chunk:?}"
        );
        assert_eq!(chunk.matches("\n\n").count(), 1, "{chunk:?}");
    }
    let events = response.events();
    assert_eq!(events.len(), 1 + 4 + 1 + 1, "{events:#?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..5]
        .iter()
        .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 ");
    let last = &chunks[5];
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(
            chunk.get("usage").is_none(),
            "usage without include_usage: {chunk}"
        );
    }
}

#[tokio::test]
async fn stream_has_usage_event_only_with_include_usage() {
    let mock = mock().await;
    let response = post_chat(&mock, &[], chat_body(3, true, true)).await;
    assert!(response.complete);
    let events = response.events();
    assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1, "{events:#?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    );
    for event in &events[..events.len() - 2] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["usage"], Value::Null);
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn stream_is_paced_by_tokens_per_second() {
    let mock = mock().await;
    let started = Instant::now();
    let response = post_chat(&mock, &[("x-mock-tps", "50")], chat_body(5, true, false)).await;
    assert!(response.complete);
    // 5 tokens at 20 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(95),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn completions_and_stream() {
    let mock = mock().await;
    let body = json!({"model": "m", "prompt": ["one two", "three"], "max_tokens": 2}).to_string();
    let response = exchange(mock.addr, "POST", "/v1/completions", &[], &body).await;
    let body = response.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "tok0 tok1");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );

    let body = json!({"prompt": "hi", "max_tokens": 2, "stream": true}).to_string();
    let response = exchange(mock.addr, "POST", "/v1/completions", &[], &body).await;
    let events = response.events();
    assert_eq!(events.len(), 2 + 1 + 1, "{events:#?}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["model"], "mock-model");
    assert_eq!(first["choices"][0]["text"], "tok0 ");
    let last: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(events[3], "[DONE]");
}

#[tokio::test]
async fn embeddings_and_models() {
    let mock = mock().await;
    let body = json!({"model": "embed", "input": ["a b c", "d"]}).to_string();
    let response = exchange(mock.addr, "POST", "/v1/embeddings", &[], &body).await;
    let body = response.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "embed");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 8);
    }

    let response = get(mock.addr, "/v1/models", &[]).await;
    assert_eq!(
        response.json(),
        json!({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "obleth-mock"}
        ]})
    );
}

#[tokio::test]
async fn malformed_json_is_an_openai_400() {
    let mock = mock().await;
    let response = exchange(mock.addr, "POST", "/v1/chat/completions", &[], "{not json").await;
    assert_eq!(response.status, 400);
    let error = &response.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], Value::Null);
    assert!(error["message"].is_string());
}

#[tokio::test]
async fn status_overrides() {
    let mock = mock().await;
    let response = post_chat(
        &mock,
        &[("x-mock-status", "429")],
        chat_body(1, false, false),
    )
    .await;
    assert_eq!(response.status, 429);
    assert_eq!(response.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(response.header("x-mock-server"), Some("alpha"));

    let failing = MockUpstream::start(MockConfig {
        status: Some(503),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let response = get(failing.addr, "/v1/models", &[]).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"]["type"], "server_error");
    let response = get(failing.addr, "/health", &[]).await;
    assert_eq!(response.status, 200);
    // The header wins over the configured status.
    let response = get(failing.addr, "/v1/models", &[("x-mock-status", "200")]).await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn latency_delays_the_headers() {
    let mock = mock().await;
    let started = Instant::now();
    let response = get(mock.addr, "/bench", &[("x-mock-latency-ms", "150")]).await;
    assert_eq!(response.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn invalid_override_is_a_400() {
    let mock = mock().await;
    let response = get(mock.addr, "/bench", &[("x-mock-fault", "explode")]).await;
    assert_eq!(response.status, 400);
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-mock-fault"));
}

#[tokio::test]
async fn close_fault_sends_nothing() {
    let mock = mock().await;
    let raw = request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-fault", "close")],
        &chat_body(2, false, false),
    );
    let mut stream = send(mock.addr, &raw).await;
    let bytes = read_until_closed(&mut stream).await;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn close_mid_body_cuts_a_stream_after_two_events() {
    let mock = mock().await;
    let response = cut_mid_body(&mock, true).await;
    assert_eq!(response.status, 200);
    assert!(!response.complete, "the stream must not end cleanly");
    let events = response.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(!String::from_utf8_lossy(&response.bytes).contains("[DONE]"));
}

#[tokio::test]
async fn close_mid_body_cuts_a_json_body() {
    let mock = mock().await;
    let response = cut_mid_body(&mock, false).await;
    assert_eq!(response.status, 200);
    assert!(!response.complete);
    let body = response.body();
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err());
}

#[tokio::test]
async fn slow_body_sends_spaced_chunks() {
    let mock = mock().await;
    let started = Instant::now();
    let response = get(mock.addr, "/echo", &[("x-mock-fault", "slow-body-ms:100")]).await;
    assert!(response.complete);
    assert!(response.chunks.len() >= 3, "{:?}", response.chunks);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(response.json()["path"], "/echo");
}

#[tokio::test]
async fn hang_never_answers_until_stopped() {
    let mock = mock().await;
    let raw = request("GET", "/bench", &[("x-mock-fault", "hang")], "");
    let mut stream = send(mock.addr, &raw).await;
    let mut buf = [0; 64];
    assert!(timeout(Duration::from_millis(300), stream.read(&mut buf))
        .await
        .is_err());
    mock.stop();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test]
async fn hang_ends_when_the_client_leaves() {
    let mock = mock().await;
    let raw = request("GET", "/bench", &[("x-mock-fault", "hang")], "");
    let stream = send(mock.addr, &raw).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.open_connections(), 1);
    drop(stream);
    let deadline = Instant::now() + READ_LIMIT;
    while mock.open_connections() > 0 {
        assert!(Instant::now() < deadline, "the hung connection stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_follows_set_healthy() {
    let mock = mock().await;
    let response = get(mock.addr, "/health", &[]).await;
    assert_eq!((response.status, response.body()), (200, b"ok".to_vec()));
    mock.set_healthy(false);
    let response = get(mock.addr, "/health", &[]).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("x-mock-server"), Some("alpha"));
    mock.set_healthy(true);
    let response = get(mock.addr, "/health", &[]).await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn bench_is_plain_ok() {
    let mock = mock().await;
    for path in ["/", "/bench"] {
        let response = get(mock.addr, path, &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body(), b"ok\n");
        assert!(response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
    }
    let response = get(mock.addr, "/nowhere", &[]).await;
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn echo_reports_the_request() {
    let mock = mock().await;
    let response = exchange(
        mock.addr,
        "PUT",
        "/echo/a/b?x=1&y=2",
        &[
            ("X-Forwarded-For", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ],
        "hello",
    )
    .await;
    let echo = response.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["headers"]["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    assert_eq!(echo["headers"]["host"], "mock");
}

#[tokio::test]
async fn keeps_connections_alive() {
    let mock = mock().await;
    let first = "GET /bench HTTP/1.1\r\nhost: mock\r\n\r\n";
    let second = request("GET", "/health", &[], "");
    let mut stream = send(mock.addr, &format!("{first}{second}")).await;
    let bytes = read_until_closed(&mut stream).await;
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(mock.requests(), 2);
    assert_eq!(mock.connections(), 1);
}

#[tokio::test]
async fn stop_closes_the_listener_and_open_connections() {
    let mock = mock().await;
    let mut idle = send(mock.addr, "GET /bench HTTP/1.1\r\nhost: mock\r\n\r\n").await;
    let mut reader = BufReader::new(&mut idle);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"));

    mock.stop();
    let err = TcpStream::connect(mock.addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // The kept-alive connection is closed too.
    let mut rest = Vec::new();
    timeout(READ_LIMIT, reader.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_obleth-mock-upstream"))
        .args(["--listen", "127.0.0.1:0", "--name", "bin", "--threads", "2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    timeout(READ_LIMIT, stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("obleth-mock-upstream listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let response = get(addr, "/health", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-mock-server"), Some("bin"));
    child.kill().await.unwrap();
}
