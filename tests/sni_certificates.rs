//! A TLS listener with several certificates, chosen by SNI as HAProxy's
//! `crt-list` chooses: exact name, then a wildcard, then the first entry;
//! an RSA and an ECDSA certificate for the same names side by side; SIGHUP
//! and the admin API reload them for new handshakes while open connections
//! go on; each certificate's expiry is a metric.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use openssl::pkey::Id;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::X509;

/// What `openssl s_client` is served for `server_name` (none: no SNI),
/// with `extra` arguments.
fn served(addr: SocketAddr, server_name: Option<&str>, extra: &[&str]) -> X509 {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match server_name {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate served for {server_name:?}:\n{text}"));
    X509::from_pem(text[begin..].as_bytes()).expect("a PEM certificate")
}

fn common_name(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

fn serial(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|h| h.to_string()))
        .expect("serial")
}

fn file_serial(path: &str) -> String {
    serial(&X509::from_pem(&std::fs::read(path).expect("cert file")).expect("pem"))
}

/// Unix time of a certificate file's `notAfter`.
fn not_after(path: &str) -> f64 {
    let cert = X509::from_pem(&std::fs::read(path).expect("cert file")).expect("pem");
    let epoch = openssl::asn1::Asn1Time::from_unix(0).expect("epoch");
    let d = epoch.diff(cert.not_after()).expect("diff");
    f64::from(d.days) * 86_400.0 + f64::from(d.secs)
}

fn listener_config(certificates: &[(&str, &str, &[&str])], upstream: &MockUpstream) -> String {
    let mut text = format!(
        "listeners:\n  - name: edge\n    address: {LISTEN}\n    tls:\n      certificates:\n"
    );
    for (cert, key, names) in certificates {
        text.push_str(&format!(
            "        - {{ cert: '{cert}', key: '{key}', names: {names:?} }}\n"
        ));
    }
    text.push_str(&format!(
        "pools:\n{}routes:\n  - name: all\n    proxy: {{ pool: p }}\n",
        pool("p", &[upstream], "")
    ));
    text
}

/// A kept-alive HTTP/1.1 connection over TLS with `server_name` as SNI.
fn open_connection(addr: SocketAddr, server_name: &str) -> SslStream<std::net::TcpStream> {
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("tls");
    connector.set_verify(SslVerifyMode::NONE);
    connector
        .build()
        .connect(server_name, tcp)
        .expect("handshake")
}

/// One request on `tls`, its whole response read; its status line.
fn request(tls: &mut SslStream<std::net::TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tls.read(&mut buf).expect("response");
        assert!(n > 0, "closed mid-response");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while got.len() < head_end + length {
        let n = tls.read(&mut buf).expect("body");
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    head.lines().next().unwrap_or_default().to_uppercase()
}

#[tokio::test]
async fn certificates_are_chosen_by_exact_name_then_wildcard_then_the_default() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let default = self_signed(&dir, "default.test");
    let wildcard = self_signed_for(&dir, &["*.example.com"], false);
    let api = self_signed(&dir, "api.example.com");
    // No `names`: taken from the certificate's subjectAltName.
    let other = self_signed_for(&dir, &["other.test", "alias.test"], false);
    let config = listener_config(
        &[
            (&default.0, &default.1, &[]),
            (&wildcard.0, &wildcard.1, &["*.example.com"]),
            (&api.0, &api.1, &["api.example.com"]),
            (&other.0, &other.1, &[]),
        ],
        &up,
    );
    let obleth = Obleth::start(&config).await;
    let addr = obleth.http;
    let cn = tokio::task::spawn_blocking(move || {
        [
            Some("api.example.com"),
            Some("www.example.com"),
            Some("API.Example.COM"),
            Some("deep.www.example.com"),
            Some("alias.test"),
            Some("unknown.test"),
            None,
        ]
        .map(|name| common_name(&served(addr, name, &[])))
    })
    .await
    .expect("clients");
    assert_eq!(
        cn,
        [
            "api.example.com",
            "*.example.com",
            "api.example.com",
            "default.test",
            "other.test",
            "default.test",
            "default.test"
        ]
    );
    // Each certificate's expiry, labelled with the first name it serves.
    for (name, cert) in [
        ("default.test", &default.0),
        ("*.example.com", &wildcard.0),
        ("other.test", &other.0),
    ] {
        let sample =
            format!("obleth_tls_certificate_expiry_seconds{{listener=\"edge\",name=\"{name}\"}}");
        assert_eq!(obleth.metric(&sample).await, not_after(cert), "{name}");
    }
}

#[tokio::test]
async fn rsa_and_ecdsa_certificates_for_the_same_names_are_served_by_what_the_client_accepts() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let rsa = self_signed(&dir, "site.test");
    let ec = self_signed_for(&dir, &["site.test"], true);
    let config = listener_config(
        &[
            (&rsa.0, &rsa.1, &["site.test"]),
            (&ec.0, &ec.1, &["site.test"]),
        ],
        &up,
    );
    let obleth = Obleth::start(&config).await;
    let addr = obleth.http;
    let kinds = tokio::task::spawn_blocking(move || {
        [
            ["-sigalgs", "ECDSA+SHA256"],
            ["-sigalgs", "rsa_pss_rsae_sha256"],
        ]
        .map(|args| {
            served(addr, Some("site.test"), &args)
                .public_key()
                .expect("key")
                .id()
        })
    })
    .await
    .expect("clients");
    assert_eq!(kinds, [Id::EC, Id::RSA]);
}

#[tokio::test]
async fn a_reload_swaps_certificates_for_new_handshakes_and_keeps_open_connections() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let default = self_signed(&dir, "default.test");
    let api = self_signed(&dir, "api.example.com");
    let config = listener_config(
        &[
            (&default.0, &default.1, &[]),
            (&api.0, &api.1, &["api.example.com"]),
        ],
        &up,
    );
    let obleth = Obleth::start(&config).await;
    let addr = obleth.http;
    let first = file_serial(&api.0);
    let mut open = tokio::task::spawn_blocking(move || open_connection(addr, "api.example.com"))
        .await
        .expect("connect");
    assert_eq!(
        serial(open.ssl().peer_certificate().as_ref().expect("cert")),
        first
    );

    // Renew in place, as certbot or cert-manager does, and send SIGHUP.
    let renewed = self_signed(&dir, "api.example.com");
    std::fs::copy(&renewed.0, &api.0).expect("copy cert");
    std::fs::copy(&renewed.1, &api.1).expect("copy key");
    let second = file_serial(&api.0);
    assert_ne!(first, second);
    obleth.signal("HUP");
    obleth
        .wait_stderr("certificates reloaded", Duration::from_secs(10))
        .await;
    let now =
        tokio::task::spawn_blocking(move || serial(&served(addr, Some("api.example.com"), &[])))
            .await
            .expect("client");
    assert_eq!(now, second, "new handshakes get the renewed certificate");
    let (status, open) = tokio::task::spawn_blocking(move || (request(&mut open), open))
        .await
        .expect("request");
    assert_eq!(status, "HTTP/1.1 200 OK", "the open connection goes on");
    let mut open = open;

    // The admin API does the same; files that do not load change nothing.
    let admin = Admin::of(&obleth);
    let third = self_signed(&dir, "api.example.com");
    std::fs::copy(&third.0, &api.0).expect("copy cert");
    std::fs::copy(&third.1, &api.1).expect("copy key");
    let (status, listed) = admin.call("POST", "/certificates/reload", None).await;
    assert_eq!(status, 200, "{listed}");
    let api_entry = listed
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "api.example.com"))
        .cloned()
        .expect("listed");
    assert_eq!(api_entry["expires_at"].as_f64(), Some(not_after(&api.0)));
    let third_serial = file_serial(&api.0);
    std::fs::write(&api.0, "not a certificate").expect("break the file");
    let (status, body) = admin.call("POST", "/certificates/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("api.example.com"),
        "{body}"
    );
    let still = tokio::task::spawn_blocking(move || {
        let status = request(&mut open);
        (status, serial(&served(addr, Some("api.example.com"), &[])))
    })
    .await
    .expect("client");
    assert_eq!(still, ("HTTP/1.1 200 OK".to_string(), third_serial));
    assert_eq!(
        obleth
            .metric("obleth_tls_certificate_reloads_total{result=\"rejected\"}")
            .await,
        1.0
    );
    assert_eq!(
        obleth
            .metric("obleth_tls_certificate_reloads_total{result=\"ok\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_start_up_naming_the_files() {
    let dir = TempDir::new();
    let (cert, _) = self_signed(&dir, "a.test");
    let (_, other_key) = self_signed(&dir, "b.test");
    let config = dir.path().join("obleth.yaml");
    let [port, admin, metrics] = free_ports::<3>();
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - address: 127.0.0.1:{port}\n    tls: {{ cert: '{cert}', key: '{other_key}' }}\n\
             admin: {{ address: 127.0.0.1:{admin} }}\nmetrics: {{ address: 127.0.0.1:{metrics} }}\n\
             pools:\n  - name: p\n    servers: [{{ address: 127.0.0.1:9 }}]\nroutes:\n  - name: all\n    proxy: {{ pool: p }}\n"
        ),
    )
    .expect("config");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_obleth"))
            .args(["run", "-c"])
            .arg(&config)
            .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
            .output(),
    )
    .await
    .expect("exits")
    .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not belong to the certificate") && stderr.contains(&other_key),
        "{stderr}"
    );
}
