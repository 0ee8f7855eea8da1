//! TLS termination in-process (ALPN h2 and http/1.1) and cleartext HTTP/2.

mod common;

use std::process::Command;

use common::*;

/// A self-signed certificate for `localhost`, made with the openssl tool.
fn self_signed(dir: &TempDir) -> (String, String) {
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http11_and_proxies() {
    let a = mock("a").await;
    let certs = TempDir::new();
    let (cert, key) = self_signed(&certs);
    let port = free_port();
    let config = format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:{port}\n    tls: {{ cert: '{cert}', key: '{key}' }}\n\
         pools:\n{}routes:\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[&a], "")
    );
    let obleth = Obleth::start(&config).await;
    let url = format!("https://localhost:{port}/echo");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();

    let h2 = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    let body: serde_json::Value = r.json_body().await;
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    let h1 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    drop(obleth);
}

#[tokio::test]
async fn h2c_listener_speaks_cleartext_http2() {
    let a = mock("a").await;
    let port = free_port();
    let config = format!(
        "listeners:\n  - name: h2c\n    address: 127.0.0.1:{port}\n    h2c: true\n\
         pools:\n{}routes:\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[&a], "")
    );
    let _obleth = Obleth::start(&config).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .get(format!("http://127.0.0.1:{port}/bench"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn upstream_tls_with_sni_reaches_a_tls_server() {
    // The TLS server is another obleth terminating TLS in front of the mock.
    let a = mock("a").await;
    let certs = TempDir::new();
    let (cert, key) = self_signed(&certs);
    let tls_port = free_port();
    let _front = Obleth::start(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:{tls_port}\n    tls: {{ cert: '{cert}', key: '{key}' }}\n\
         pools:\n{}routes:\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[&a], "")
    ))
    .await;
    let edge = Obleth::start(&format!(
        "pools:\n  - name: secure\n    tls: {{ sni: localhost, verify: false }}\n    servers: [{{ address: '127.0.0.1:{tls_port}' }}]\n\
         routes:\n  - name: all\n    proxy: {{ pool: secure }}\n"
    ))
    .await;
    let r = client().get(edge.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.json_body().await;
    assert_eq!(
        body["headers"]["x-forwarded-proto"], "https",
        "the hop to the TLS server was TLS"
    );
}

trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_str(&self.text().await.expect("body")).expect("JSON")
    }
}
