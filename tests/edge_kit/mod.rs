//! Helpers of the edge tests (TLS, failures, load balancing, routing, LLM
//! models): waits on observable conditions with deadlines, metric samples
//! that fail loudly when absent, certificates made with the `openssl` crate,
//! and small hand-rolled upstreams the mock cannot imitate — a TLS server
//! that records the SNI it was sent, a server that closes every connection
//! before answering, one that never reads, one that refuses every
//! connection, and one whose stream advances only when the test says so.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslAcceptor, SslMethod};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::common::{catch_all, Obleth};

/// How long any wait of these tests may take before it fails: generous, so
/// a loaded machine is slow rather than red, and bounded, so a hang fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `condition` every 20 ms until it holds; panics naming `what` after
/// [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sample exists and equals `want`; an absent sample never
/// satisfies the wait.
pub async fn wait_sample(obleth: &Obleth, name: &str, want: f64) {
    obleth.wait_metric(name, |got| got == want, DEADLINE).await;
}

/// `obleth_upstream_server_healthy` of one server of pool `pool`.
pub fn healthy(pool: &str, server: impl std::fmt::Display) -> String {
    format!("obleth_upstream_server_healthy{{pool=\"{pool}\",server=\"{server}\"}}")
}

/// A pool `p` of `servers` (addresses, for upstreams that are not mocks)
/// with extra pool lines, behind a catch-all route.
pub fn pool_of(servers: &[String], extra: &str) -> String {
    let mut text = String::from("pools:\n  - name: p\n    servers:\n");
    for s in servers {
        text.push_str(&format!("      - address: '{s}'\n"));
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str(&format!("    {line}\n"));
    }
    text + &catch_all("p")
}

/// Waits until a SIGHUP reload was applied `n` times in all.
pub async fn wait_reloaded(obleth: &Obleth, n: f64) {
    wait_sample(obleth, "obleth_config_reloads_total{result=\"ok\"}", n).await;
}

// ---------------------------------------------------------------- certificates

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

fn serial() -> Asn1Integer {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = (unix_now() as u64) << 16 | NEXT.fetch_add(1, Ordering::Relaxed);
    BigNum::from_dec_str(&n.to_string())
        .and_then(|b| b.to_asn1_integer())
        .expect("serial")
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    name.build()
}

/// A certificate authority of the test's own.
pub struct Ca {
    pub cert: X509,
    key: PKey<Private>,
}

/// When a certificate is valid.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From an hour ago until two days from now.
    Current,
    /// Ended a day ago.
    Expired,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let key = ec_key();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(cn)).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(unix_now() - 3600).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(unix_now() + 7 * 86_400).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(ski).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            cert: b.build(),
            key,
        }
    }

    /// A server certificate for the DNS names `dns` and IP addresses `ips`,
    /// signed by this authority.
    pub fn issue(&self, dns: &[&str], ips: &[&str], validity: Validity) -> Leaf {
        let key = ec_key();
        let (from, until) = match validity {
            Validity::Current => (unix_now() - 3600, unix_now() + 2 * 86_400),
            Validity::Expired => (unix_now() - 30 * 86_400, unix_now() - 86_400),
        };
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&name(dns.first().or(ips.first()).unwrap_or(&"leaf")))
            .unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(from).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(until).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        for ip in ips {
            san.ip(ip);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        Leaf {
            cert: b.build(),
            key,
        }
    }

    /// Writes the authority's certificate (PEM) into `dir`, e.g. for
    /// `SSL_CERT_FILE`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.cert.to_pem().unwrap()).expect("write CA");
        path
    }
}

impl Leaf {
    /// Writes certificate and key (PEM) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, self.cert.to_pem().unwrap()).expect("write cert");
        std::fs::write(&key, self.key.private_key_to_pem_pkcs8().unwrap()).expect("write key");
        (cert.display().to_string(), key.display().to_string())
    }
}

// ------------------------------------------------------------ a TLS upstream

/// A TLS server (OpenSSL, blocking, a thread per connection) that records
/// the SNI of every handshake it sees — including the ones the client then
/// abandons because it refused the certificate — and answers every HTTP/1.1
/// request with JSON naming itself and the SNI of the connection.
pub struct TlsServer {
    pub addr: SocketAddr,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    requests: Arc<AtomicU64>,
}

impl TlsServer {
    pub fn start(name: &str, leaf: &Leaf) -> Self {
        let mut acceptor =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
        acceptor.set_private_key(&leaf.key).unwrap();
        acceptor.set_certificate(&leaf.cert).unwrap();
        acceptor.check_private_key().unwrap();
        let snis: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = snis.clone();
        acceptor.set_servername_callback(move |ssl, _alert| {
            let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
            seen.lock().unwrap().push(sni);
            Ok(())
        });
        let acceptor = Arc::new(acceptor.build());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let (name, counter) = (name.to_string(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acceptor, name, counter) = (acceptor.clone(), name.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                    if let Ok(mut tls) = acceptor.accept(stream) {
                        let sni = tls
                            .ssl()
                            .servername(NameType::HOST_NAME)
                            .unwrap_or("")
                            .to_string();
                        serve_http(&mut tls, &name, &sni, &counter);
                    }
                });
            }
        });
        Self {
            addr,
            snis,
            requests,
        }
    }

    /// The SNI of every handshake so far (`None`: the client sent none).
    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().unwrap().clone()
    }

    /// HTTP requests answered (only on connections whose handshake the
    /// client completed).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Answers HTTP/1.1 requests on one connection until it closes.
fn serve_http(stream: &mut (impl Read + Write), name: &str, sni: &str, counter: &AtomicU64) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let path = request_line.next().unwrap_or("").to_string();
        let mut host = String::new();
        let mut length = 0usize;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "host" => host = v.trim().to_string(),
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        counter.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "server": name, "sni": sni, "method": method, "path": path, "host": host,
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-tls-server: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------- misbehaving upstreams

/// Reads from `stream` until `end` has arrived; `None` when it closed
/// first.
async fn read_through(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    end: &[u8],
) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&buf, end).is_none() {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf)
}

/// Reads one request head from `stream`; false when it closed first.
async fn read_head(stream: &mut TcpStream) -> bool {
    read_through(stream, b"\r\n\r\n").await.is_some()
}

/// A server that reads each request head and closes the connection without
/// sending a byte — only this server, so a retry that reaches another one
/// succeeds.
pub struct ClosingServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl ClosingServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Self { addr, requests }
    }

    /// Request heads received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// A server that accepts connections and never reads from them, with a small
/// receive buffer, so writes to it stall once the buffers are full.
pub struct Blackhole {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Blackhole {
    pub async fn start() -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        Self { addr, accepted }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// An address that refuses every connection: a socket bound to it but not
/// listening, held for as long as the value lives (so no other test can get
/// the port meanwhile).
pub struct Refusing {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl Refusing {
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        Self {
            addr,
            _socket: socket,
        }
    }
}

/// A server answering its first request with a chunked `text/event-stream`
/// whose chunks are the strings the test sends, each written only when sent;
/// `None` ends the stream.
pub struct SteppedStream {
    pub addr: SocketAddr,
    pub chunks: mpsc::UnboundedSender<Option<String>>,
}

impl SteppedStream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (chunks, mut rx) = mpsc::unbounded_channel::<Option<String>>();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            if !read_head(&mut stream).await {
                return;
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\nx-mock-server: stepped\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(item) = rx.recv().await {
                let frame = match item {
                    Some(data) => format!("{:x}\r\n{data}\r\n", data.len()),
                    None => "0\r\n\r\n".to_string(),
                };
                if stream.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            // Keep the connection until the proxy closes it.
            let mut rest = [0u8; 1024];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
        });
        Self { addr, chunks }
    }
}

/// The status line's code of a raw HTTP/1.1 response read from `stream`.
pub async fn read_status(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u16> {
    let buf = read_through(stream, b"\r\n").await?;
    let line = String::from_utf8_lossy(&buf);
    line.split(' ').nth(1).and_then(|s| s.parse().ok())
}
