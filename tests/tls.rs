//! TLS termination in-process (ALPN h2 and http/1.1), cleartext HTTP/2, and
//! TLS to upstreams: the SNI sent, certificate and name verification, and
//! `verify: false` as the only way past a certificate that does not verify.

mod common;
mod edge_kit;

use common::*;
use edge_kit::*;

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http11_and_proxies() {
    let a = mock("a").await;
    let certs = TempDir::new();
    let (cert, key) = self_signed(&certs, "localhost");
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

/// A CA-signed certificate for `localhost` as a TLS listener's files, and
/// the CA as a file obleth can be told to trust (`SSL_CERT_FILE`).
struct Pki {
    ca: Ca,
    ca_file: String,
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new();
        let ca = Ca::new("obleth test CA");
        let ca_file = ca.write(dir.path(), "ca.pem").display().to_string();
        Self { ca, ca_file, dir }
    }

    fn trust(&self) -> [(&str, &str); 1] {
        [("SSL_CERT_FILE", self.ca_file.as_str())]
    }
}

/// A pool `name` of one server reached over TLS with `tls` settings, and a
/// route `/name/…` to it, each attempt final (`retries: 0`) so a refused
/// certificate shows as the documented 502 rather than as "no server left".
fn tls_pool(name: &str, server: &str, tls: &str) -> (String, String) {
    (
        format!(
            "  - name: {name}\n    retries: 0\n    tls: {tls}\n    servers: [{{ address: '{server}' }}]\n"
        ),
        format!(
            "  - name: {name}\n    match: {{ path: {{ prefix: /{name}/ }} }}\n    proxy: {{ pool: {name} }}\n"
        ),
    )
}

fn config_of(entries: &[(String, String)]) -> String {
    let mut pools = String::from("pools:\n");
    let mut routes = String::from("routes:\n");
    for (p, r) in entries {
        pools.push_str(p);
        routes.push_str(r);
    }
    pools + &routes
}

#[tokio::test]
async fn upstream_tls_sends_the_configured_sni_and_checks_the_name_against_it() {
    let pki = Pki::new();
    let leaf = pki
        .ca
        .issue(&["upstream.test", "localhost"], &[], Validity::Current);
    let server = TlsServer::start("good", &leaf);
    let port = server.addr.port();
    let edge = Obleth::start_with(
        &config_of(&[
            // The configured SNI, verified against the certificate.
            tls_pool("named", &server.addr.to_string(), "{ sni: upstream.test }"),
            // No `sni`: the host part of the first server's address.
            tls_pool("default", &format!("localhost:{port}"), "{}"),
            // Any SNI can be sent; only `verify: false` gets past a name
            // the certificate does not carry.
            tls_pool(
                "custom",
                &server.addr.to_string(),
                "{ sni: custom.sni.test, verify: false }",
            ),
            tls_pool(
                "mismatch",
                &server.addr.to_string(),
                "{ sni: custom.sni.test }",
            ),
        ]),
        "httplog",
        &pki.trust(),
    )
    .await;
    let c = client();
    for (route, sni) in [
        ("named", "upstream.test"),
        ("default", "localhost"),
        ("custom", "custom.sni.test"),
    ] {
        let r = c
            .get(edge.url(&format!("/{route}/x")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{route}: {}", edge.stderr());
        let body = r.json_body().await;
        assert_eq!(body["sni"], sni, "{route}: {body}");
        assert_eq!(body["server"], "good");
        assert_eq!(body["path"], format!("/{route}/x"));
    }
    let before = server.requests();
    let r = c.get(edge.url("/mismatch/x")).send().await.unwrap();
    assert_eq!(r.status(), 502, "a name the certificate lacks is refused");
    assert_eq!(r.text().await.unwrap(), "502 Bad Gateway\n");
    assert_eq!(server.requests(), before, "nothing was sent over it");
    let snis = server.snis();
    for sni in ["upstream.test", "localhost", "custom.sni.test"] {
        assert!(
            snis.iter().any(|s| s.as_deref() == Some(sni)),
            "{sni} never sent: {snis:?}"
        );
    }
    assert!(
        snis.iter()
            .flatten()
            .all(|s| ["upstream.test", "localhost", "custom.sni.test"].contains(&s.as_str())),
        "{snis:?}"
    );
}

#[tokio::test]
async fn upstream_certificates_that_do_not_verify_are_refused_unless_verify_is_false() {
    let pki = Pki::new();
    let rogue_ca = Ca::new("someone else's CA");
    let name = &["upstream.test"][..];
    let servers = [
        ("good", pki.ca.issue(name, &[], Validity::Current)),
        ("rogue", rogue_ca.issue(name, &[], Validity::Current)),
        ("expired", pki.ca.issue(name, &[], Validity::Expired)),
        (
            "wrongname",
            pki.ca.issue(&["other.test"], &[], Validity::Current),
        ),
    ]
    .map(|(n, leaf)| (n, TlsServer::start(n, &leaf)));
    let mut entries = Vec::new();
    for (n, server) in &servers {
        let addr = server.addr.to_string();
        // `verify` left out: it defaults to true.
        entries.push(tls_pool(n, &addr, "{ sni: upstream.test }"));
        entries.push(tls_pool(
            &format!("{n}-noverify"),
            &addr,
            "{ sni: upstream.test, verify: false }",
        ));
    }
    let edge = Obleth::start_with(&config_of(&entries), "httplog", &pki.trust()).await;
    let c = client();

    let r = c.get(edge.url("/good/x")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a certificate of the trusted CA passes: {}",
        edge.stderr()
    );
    for (n, server) in &servers[1..] {
        let r = c.get(edge.url(&format!("/{n}/x"))).send().await.unwrap();
        assert_eq!(r.status(), 502, "{n} certificate accepted");
        assert!(r.headers().get("x-tls-server").is_none());
        assert_eq!(r.text().await.unwrap(), "502 Bad Gateway\n");
        assert_eq!(server.requests(), 0, "{n}: a request went over it");
        assert_eq!(
            server.snis(),
            vec![Some("upstream.test".to_string())],
            "{n}: one handshake, refused"
        );
        assert_eq!(
            edge.metric(&format!(
                "obleth_upstream_attempts_total{{outcome=\"connect_error\",pool=\"{n}\"}}"
            ))
            .await,
            1.0,
            "{n}: counted as a failed connection"
        );
    }
    let lines = edge.access_lines(4).await;
    for n in ["rogue", "expired", "wrongname"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("\"GET /{n}/x ")))
            .unwrap_or_else(|| panic!("no log line for {n}: {lines:?}"));
        assert!(line.contains(" 502 ") && line.contains(" SC "), "{line}");
    }
    // `verify: false` is the way past each of them, and the only one.
    for (n, server) in &servers {
        let r = c
            .get(edge.url(&format!("/{n}-noverify/x")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{n} with verify: false");
        assert_eq!(r.json_body().await["server"], *n);
        assert_eq!(server.requests(), if *n == "good" { 2 } else { 1 });
    }
}

#[tokio::test]
async fn a_private_ca_is_not_trusted_unless_obleth_is_given_it() {
    // obleth has no CA option of its own; it trusts OpenSSL's default
    // store, which `SSL_CERT_FILE` replaces. Without it, the system roots
    // do not vouch for a private CA.
    let pki = Pki::new();
    let server = TlsServer::start(
        "good",
        &pki.ca.issue(&["upstream.test"], &[], Validity::Current),
    );
    let entries = [tls_pool(
        "p",
        &server.addr.to_string(),
        "{ sni: upstream.test }",
    )];
    let untrusting = Obleth::start(&config_of(&entries)).await;
    let r = client().get(untrusting.url("/p/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(server.requests(), 0);
    let trusting = Obleth::start_with(&config_of(&entries), "httplog", &pki.trust()).await;
    let r = client().get(trusting.url("/p/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn upstream_tls_reaches_an_obleth_tls_listener_and_verifies_it() {
    // The TLS server is another obleth terminating TLS in front of the mock,
    // with a certificate of the CA the edge trusts.
    let a = mock("a").await;
    let pki = Pki::new();
    let (cert, key) = pki
        .ca
        .issue(&["localhost"], &[], Validity::Current)
        .write(pki.dir.path(), "front");
    let tls_port = free_port();
    let _front = Obleth::start(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:{tls_port}\n    tls: {{ cert: '{cert}', key: '{key}' }}\n\
         pools:\n{}routes:\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[&a], "")
    ))
    .await;
    let edge = Obleth::start_with(
        &format!(
            "pools:\n  - name: secure\n    tls: {{ sni: localhost }}\n    servers: [{{ address: '127.0.0.1:{tls_port}' }}]\n\
             routes:\n  - name: all\n    proxy: {{ pool: secure }}\n"
        ),
        "httplog",
        &pki.trust(),
    )
    .await;
    let r = client().get(edge.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "a");
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
