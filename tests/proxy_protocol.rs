//! PROXY protocol on listeners: a trusted relay's v1 or v2 header makes its
//! client the connection's client — in `X-Forwarded-For`, the access log
//! and source ACLs — on plaintext and TLS listeners; untrusted sources and
//! missing, malformed or slow headers are closed and counted.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: proxied.test\r\nConnection: close\r\n\r\n";

fn config(upstream: &MockUpstream, proxy_protocol: &str, tls: &str) -> String {
    format!(
        "listeners:\n  - name: edge\n    address: {LISTEN}\n{tls}    proxy_protocol: {proxy_protocol}\npools:\n\
         {}routes:\n  - name: denied\n    match: {{ path: {{ prefix: /echo }} }}\n    deny_source: 198.51.100.0/24\n    proxy: {{ pool: p }}\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[upstream], ""),
    )
}

/// A v2 `PROXY` header for a TCP over IPv4 client.
fn v2_header(source: [u8; 4], source_port: u16, destination: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&source);
    out.extend_from_slice(&destination);
    out.extend_from_slice(&source_port.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// The status line and, for a 200 from the mock's `/echo`, the
/// `X-Forwarded-For` it received.
fn parse_answer(answer: &str) -> (String, Option<String>) {
    let status = answer.lines().next().unwrap_or_default().to_string();
    let forwarded = answer.split_once("\r\n\r\n").and_then(|(_, body)| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["headers"]["x-forwarded-for"].as_str().map(str::to_string)
    });
    (status, forwarded)
}

async fn through(addr: SocketAddr, header: &[u8]) -> (String, Option<String>) {
    let bytes = [header, REQUEST].concat();
    parse_answer(&raw_exchange(addr, &bytes, Duration::from_secs(5)).await)
}

#[tokio::test]
async fn v1_and_v2_headers_from_a_trusted_relay_set_the_client_address() {
    let up = mock("a").await;
    let obleth = Obleth::start(&config(&up, "{ trusted: [127.0.0.0/8] }", "")).await;

    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
    let (status, forwarded) = through(obleth.http, v1).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(forwarded.as_deref(), Some("203.0.113.7"));

    let v2 = v2_header([192, 0, 2, 44], 40000, [10, 0, 0, 1], 443);
    let (status, forwarded) = through(obleth.http, &v2).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(forwarded.as_deref(), Some("192.0.2.44"));

    let v6 = b"PROXY TCP6 2001:db8::5 2001:db8::1 1234 443\r\n";
    let (_, forwarded) = through(obleth.http, v6).await;
    assert_eq!(forwarded.as_deref(), Some("2001:db8::5"));

    // LOCAL (the relay's own health check) keeps the socket's address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (status, forwarded) = through(obleth.http, &local).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(forwarded.as_deref(), Some("127.0.0.1"));

    let lines = obleth.access_lines(4).await;
    assert!(
        lines[0].starts_with("203.0.113.7:51234 "),
        "the access log names the relayed client: {}",
        lines[0]
    );
    assert!(lines[1].starts_with("192.0.2.44:40000 "), "{}", lines[1]);

    // Source ACLs see the relayed client, not the relay.
    let denied = v2_header([198, 51, 100, 9], 1000, [10, 0, 0, 1], 443);
    let (status, _) = through(obleth.http, &denied).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}

#[tokio::test]
async fn untrusted_sources_and_bad_headers_are_closed_and_counted() {
    let up = mock("a").await;
    // Only 127.0.0.2 may relay; the test connects from 127.0.0.1 first.
    let obleth = Obleth::start(&config(&up, "{ trusted: 127.0.0.2, timeout: 500ms }", "")).await;
    let closed = |reason: &str| format!("obleth_connections_closed_total{{reason=\"{reason}\"}}");
    let untrusted_before = obleth.metric(&closed("proxy_protocol_untrusted")).await;

    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
    let answer = raw_exchange(
        obleth.http,
        &[&v1[..], REQUEST].concat(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(answer, "", "an untrusted source gets no answer");
    obleth
        .wait_metric(
            &closed("proxy_protocol_untrusted"),
            |v| v > untrusted_before,
            Duration::from_secs(5),
        )
        .await;

    let relay = |bytes: Vec<u8>| {
        let addr = obleth.http;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
                .expect("bind 127.0.0.2");
            let mut stream = socket.connect(addr).await.expect("connect");
            stream.write_all(&bytes).await.expect("write");
            let started = Instant::now();
            let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
            (answer, started.elapsed())
        }
    };

    // From the trusted relay it works...
    let (answer, _) = relay([&v1[..], REQUEST].concat()).await;
    assert_eq!(parse_answer(&answer).1.as_deref(), Some("203.0.113.7"));
    // ...but not without a header, nor with a malformed one.
    for bad in [
        REQUEST.to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n".to_vec(),
    ] {
        let (answer, _) = relay(bad).await;
        assert_eq!(answer, "");
    }
    obleth
        .wait_metric(
            &closed("proxy_protocol_invalid"),
            |v| v >= 2.0,
            Duration::from_secs(5),
        )
        .await;
    // A header that stops halfway is timed out quickly.
    let (answer, took) = relay(b"PROXY TCP4 203.0.1".to_vec()).await;
    assert_eq!(answer, "");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    obleth
        .wait_metric(
            &closed("proxy_protocol_timeout"),
            |v| v >= 1.0,
            Duration::from_secs(5),
        )
        .await;
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_handshake() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let (cert, key) = self_signed(&dir, "localhost");
    let tls = format!("    tls: {{ cert: '{cert}', key: '{key}' }}\n");
    let obleth = Obleth::start(&config(&up, "{ trusted: [127.0.0.1] }", &tls)).await;
    let addr = obleth.http;
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.write_all(&v2_header([203, 0, 113, 80], 555, [10, 0, 0, 1], 443))
            .expect("header");
        let mut connector =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("tls");
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let mut tls = connector
            .build()
            .connect("localhost", tcp)
            .expect("handshake after the PROXY header");
        tls.write_all(REQUEST).expect("request");
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out);
        out
    })
    .await
    .expect("client");
    let (status, forwarded) = parse_answer(&answer);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(forwarded.as_deref(), Some("203.0.113.80"));
}
