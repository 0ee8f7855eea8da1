//! `obleth import-haproxy`: each sample under `tests/haproxy/` imports into
//! a configuration `obleth check` accepts, with every line it cannot
//! translate exactly reported as `FILE:LINE:`; and Debian's HAProxy, run on
//! the original, and obleth, run on the import, answer the same requests
//! from the same backends (or with the same status, Location and body).

mod common;
mod edge_kit;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use edge_kit::{Ca, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SAMPLES: &str = "tests/haproxy";

/// Imports `cfg` (with `extra` arguments), asserting success; returns the
/// YAML and the report.
fn import(cfg: &Path, extra: &[&str]) -> (String, String) {
    let cfg = cfg.display().to_string();
    let mut args = vec!["import-haproxy", cfg.as_str()];
    args.extend_from_slice(extra);
    let (ok, yaml, report) = obleth(&args);
    assert!(ok, "import of {cfg} failed:\n{report}");
    (yaml, report)
}

/// Asserts that `obleth check` accepts `yaml`.
fn assert_checks(dir: &TempDir, name: &str, yaml: &str) {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).expect("write import");
    let (ok, out, err) = obleth(&["check", "-c", &path.display().to_string()]);
    assert!(
        ok && out.contains("configuration ok"),
        "obleth check refuses {name}:\n{err}\n{yaml}"
    );
}

/// The line numbers the report names for `cfg` (`CFG:LINE: …`).
fn reported_lines(report: &str, cfg: &Path) -> BTreeSet<usize> {
    let prefix = format!("{}:", cfg.display());
    report
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            rest.split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a report line without a line number: {rest}"))
        })
        .collect()
}

/// The lines of `text` that must be reported: those marked `# reported`
/// and those starting with one of `prefixes`.
fn expected_lines(text: &str, prefixes: &[&str]) -> BTreeSet<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.split_whitespace().collect::<Vec<_>>().join(" ");
            !t.starts_with('#')
                && (t.contains("# reported") || prefixes.iter().any(|p| t.starts_with(p)))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// A certificate for the sample sites, with its key, in one PEM file as
/// HAProxy keeps them; returns its path.
fn site_pem(dir: &Path, file: &str, names: &[&str]) -> PathBuf {
    let leaf = Ca::new("import test CA").issue(names, &["127.0.0.1"], Validity::Current);
    let mut pem = leaf.cert.to_pem().expect("cert pem");
    pem.extend(leaf.key.private_key_to_pem_pkcs8().expect("key pem"));
    let path = dir.join(file);
    std::fs::write(&path, pem).expect("write pem");
    path
}

/// A sample and the keywords of the lines its report must name, besides
/// those marked `# reported` (the Debian and benchmark files are kept as
/// they are, without marks).
struct Sample {
    file: &'static str,
    reported: &'static [&'static str],
}

const DEBIAN: Sample = Sample {
    file: "debian.cfg",
    reported: &[
        "log",
        "chroot",
        "stats",
        "user",
        "group",
        "daemon",
        "ca-base",
        "ssl-default-bind",
        "option dontlognull",
        "errorfile",
    ],
};
const MULTISITE: Sample = Sample {
    file: "multisite.cfg",
    reported: &[],
};
const BENCH: Sample = Sample {
    file: "bench-edge.cfg",
    reported: &[
        "nbthread",
        "maxconn",
        "option http-keep-alive",
        "http-reuse",
        "unique-id-format",
        "unique-id-header",
    ],
};

/// The sample's text with `crt-base` pointed at `certs`: the only change
/// its lines need for `obleth check` (the certificate must exist).
fn with_certs(text: &str, certs: &Path) -> String {
    text.lines()
        .map(|l| match l.trim_start().strip_prefix("crt-base ") {
            Some(_) => format!("    crt-base {}", certs.display()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn every_sample_imports_into_a_configuration_obleth_accepts_and_reports_what_differs() {
    let dir = TempDir::new();
    site_pem(
        dir.path(),
        "example.pem",
        &["shop.example.com", "api.example.com"],
    );
    for sample in [DEBIAN, MULTISITE, BENCH] {
        let original =
            std::fs::read_to_string(Path::new(SAMPLES).join(sample.file)).expect("sample");
        let cfg = dir.path().join(sample.file);
        std::fs::write(&cfg, with_certs(&original, dir.path())).expect("write sample");
        let (yaml, report) = import(&cfg, &[]);
        assert!(
            yaml.starts_with(&format!(
                "# obleth configuration imported from {}",
                cfg.display()
            )),
            "the output names its source:\n{yaml}"
        );
        assert_checks(&dir, &format!("{}.yaml", sample.file), &yaml);
        let expected = expected_lines(&original, sample.reported);
        let reported = reported_lines(&report, &cfg);
        let missing: Vec<_> = expected.difference(&reported).collect();
        let unexpected: Vec<_> = reported.difference(&expected).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{}: lines not reported {missing:?}, reported but not expected {unexpected:?}\n{report}",
            sample.file
        );
        // Each report line is FILE:LINE: directive: verdict: why.
        for line in report
            .lines()
            .filter(|l| l.starts_with(&cfg.display().to_string()))
        {
            assert!(
                [": not translated: ", ": approximated: ", ": not needed: "]
                    .iter()
                    .any(|v| line.contains(v)),
                "{line}"
            );
        }
        assert!(
            report.contains("obleth import-haproxy: "),
            "a summary ends the report:\n{report}"
        );
    }
}

#[test]
fn the_benchmark_sample_is_the_configuration_the_benchmark_generates() {
    let dir = TempDir::new();
    let generated = dir.path().join("haproxy.cfg");
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"source tests/bench/lib.sh && haproxy_config "$0" 8090 8091"#)
        .arg(&generated)
        .status()
        .expect("bash runs");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&generated).expect("generated"),
        std::fs::read_to_string(Path::new(SAMPLES).join(BENCH.file)).expect("sample"),
        "tests/haproxy/bench-edge.cfg is haproxy_config of tests/bench/lib.sh with ports 8090 and 8091"
    );
}

#[test]
fn the_command_has_help() {
    let (ok, out, _) = obleth(&["import-haproxy", "--help"]);
    assert!(
        ok && out.contains("Usage") && out.contains("--frontend"),
        "{out}"
    );
}

#[test]
fn unreadable_files_and_files_without_a_frontend_fail_with_a_clear_message() {
    let (ok, out, err) = obleth(&["import-haproxy", "/nonexistent/haproxy.cfg"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("/nonexistent/haproxy.cfg: cannot read"),
        "{err}"
    );

    let dir = TempDir::new();
    let cfg = dir.path().join("backends.cfg");
    std::fs::write(&cfg, "defaults\n  mode http\nbackend b\n  server s 127.0.0.1:1\nfrontend t\n  mode tcp\n  bind :1\n  default_backend b\n").expect("write");
    let (ok, _, err) = obleth(&["import-haproxy", &cfg.display().to_string()]);
    assert!(!ok, "a file without an HTTP frontend is refused");
    assert!(err.contains("no HTTP frontend"), "{err}");
    assert!(
        err.contains(":6: mode tcp: not translated:"),
        "the TCP frontend is reported: {err}"
    );

    let (ok, _, err) = obleth(&[
        "import-haproxy",
        &Path::new(SAMPLES)
            .join(MULTISITE.file)
            .display()
            .to_string(),
        "--frontend",
        "nope",
    ]);
    assert!(
        !ok && err.contains("no frontend or listen section named \"nope\"")
            && err.contains("fe_main"),
        "{err}"
    );
}

#[test]
fn accept_proxy_and_several_certificates_become_proxy_protocol_and_a_certificate_list() {
    let dir = TempDir::new();
    site_pem(dir.path(), "a.pem", &["a.example.com"]);
    site_pem(dir.path(), "b.pem", &["b.example.com", "*.b.example.com"]);
    let cfg = dir.path().join("edge.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:8443 ssl crt {0}/a.pem crt {0}/b.pem accept-proxy\n  default_backend be\nbackend be\n  server s 127.0.0.1:8080\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let (yaml, report) = import(&cfg, &[]);
    assert_checks(&dir, "edge.yaml", &yaml);
    assert!(
        yaml.contains(r#"proxy_protocol: { trusted: [0.0.0.0/0, "::/0"] }"#),
        "{yaml}"
    );
    assert!(
        report.contains(":4: ") && report.contains("narrow `trusted`"),
        "{report}"
    );
    let listed = yaml
        .split_once("      certificates:\n")
        .map(|(_, rest)| rest);
    let a = format!("cert: {}/a.pem", dir.path().display());
    let b = format!("cert: {}/b.pem", dir.path().display());
    assert!(
        listed.is_some_and(|rest| rest.find(&a).zip(rest.find(&b)).is_some_and(|(a, b)| a < b)),
        "the first certificate is the default: {yaml}"
    );
    assert!(
        yaml.contains("names: [b.example.com, \"*.b.example.com\"]"),
        "{yaml}"
    );
}

// ------------------------------------------------------------------ HAProxy

/// Debian's HAProxy on a configuration, killed when dropped.
struct HaProxy {
    child: Child,
    log: PathBuf,
}

impl HaProxy {
    /// Starts `haproxy -f cfg -db` and waits until every one of `ports`
    /// accepts connections; `None` when another process took one of them
    /// first.
    async fn start(cfg: &Path, ports: &[u16]) -> Option<Self> {
        let version = Command::new("haproxy").arg("-v").output();
        assert!(
            version.is_ok_and(|o| o.status.success()),
            "these tests need Debian's haproxy: `scripts/setup.sh` installs it (through scripts/deploy-tools.sh), or `apt-get install haproxy`"
        );
        let checked = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(cfg)
            .output()
            .expect("haproxy -c runs");
        assert!(
            checked.status.success(),
            "haproxy refuses {}:\n{}",
            cfg.display(),
            String::from_utf8_lossy(&checked.stderr)
        );
        let log = cfg.with_extension("log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("haproxy log"))
            .spawn()
            .expect("haproxy starts");
        let mut haproxy = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in ports {
            loop {
                if let Ok(Some(status)) = haproxy.child.try_wait() {
                    if haproxy.log().contains("cannot bind socket") {
                        return None;
                    }
                    panic!("haproxy exited ({status}):\n{}", haproxy.log());
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy does not accept on {port}:\n{}",
                    haproxy.log()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Some(haproxy)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- upstreams

/// An HTTP/1.1 server that answers every request 200 naming itself
/// (`x-served-by: backend/server`) and echoing the `Host`, `X-Edge` and
/// `X-Debug` it received; it skips a PROXY protocol v1 line (`send-proxy`).
struct Upstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(name: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_connection(stream, name.clone()));
            }
        });
        Self { addr, task }
    }
}

async fn serve_connection(mut stream: tokio::net::TcpStream, name: String) {
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines: Vec<&str> = head.split("\r\n").collect();
        if first && lines.first().is_some_and(|l| l.starts_with("PROXY ")) {
            lines.remove(0);
        }
        first = false;
        let request_line = lines.first().copied().unwrap_or("");
        let header = |name: &str| {
            lines
                .iter()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let close = request_line.ends_with("HTTP/1.0")
            || header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let seen = |h: &str| header(h).unwrap_or_else(|| "-".into());
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: {name}\r\nx-seen-host: {}\r\nx-seen-edge: {}\r\nx-seen-debug: {}\r\n{}\r\n{name}",
            name.len(),
            seen("host"),
            seen("x-edge"),
            seen("x-debug"),
            if close { "connection: close\r\n" } else { "" },
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

// ------------------------------------------------------------ the rewrite

/// A `bind` of the sample: the section it is in and whether it has `ssl`.
#[derive(Debug, Clone)]
struct Bind {
    frontend: String,
    ssl: bool,
    haproxy: u16,
    obleth: u16,
}

/// The sample made runnable here, line for line (so line numbers hold):
/// binds on local ports, servers on the test's upstreams (without `ssl`,
/// `verify`, `sni`: the upstreams speak plain HTTP), `crt-base` on the
/// test's certificate, and the `global` lines that need root or syslog
/// commented out. Each bind takes its HAProxy or its obleth port.
fn rewrite(
    text: &str,
    certs: &Path,
    upstreams: &BTreeMap<String, SocketAddr>,
    binds: &[Bind],
    haproxy: bool,
) -> String {
    let mut section = String::new();
    let mut bind_index = 0;
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let keyword = words.first().copied().unwrap_or("");
        if ["global", "defaults", "frontend", "backend", "listen"].contains(&keyword) {
            section = words.get(1).copied().unwrap_or("").to_string();
        }
        let rewritten = match keyword {
            "bind" => {
                let b = &binds[bind_index];
                bind_index += 1;
                let port = if haproxy { b.haproxy } else { b.obleth };
                format!("    bind 127.0.0.1:{port} {}", words[2..].join(" "))
            }
            "server" => {
                let addr = upstreams[&format!("{section}/{}", words[1])];
                let mut opts = Vec::new();
                let mut i = 3;
                while i < words.len() {
                    match words[i] {
                        "ssl" | "check-ssl" => i += 1,
                        "verify" | "sni" => i += 2,
                        w => {
                            opts.push(w);
                            i += 1;
                        }
                    }
                }
                format!("    server {} {addr} {}", words[1], opts.join(" "))
            }
            "crt-base" => format!("    crt-base {}", certs.display()),
            "chroot" | "user" | "group" | "daemon" | "pidfile" => format!("#{line}"),
            "stats" | "log" if section.is_empty() => format!("#{line}"),
            _ => line.to_string(),
        };
        out.push(rewritten);
    }
    out.join("\n") + "\n"
}

/// The binds and servers of a sample, in order.
fn inventory(text: &str) -> (Vec<(String, bool)>, Vec<String>) {
    let mut section = String::new();
    let mut binds = Vec::new();
    let mut servers = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        match words.first().copied() {
            Some("global" | "defaults" | "frontend" | "backend" | "listen") => {
                section = words.get(1).copied().unwrap_or("").to_string()
            }
            Some("bind") => binds.push((section.clone(), words.contains(&"ssl"))),
            Some("server") => servers.push(format!("{section}/{}", words[1])),
            _ => {}
        }
    }
    (binds, servers)
}

/// Everything one comparison runs: the upstreams, HAProxy on the sample,
/// obleth on its import (one per frontend imported).
struct Stage {
    _upstreams: Vec<Upstream>,
    haproxy: HaProxy,
    _obleths: Vec<Obleth>,
    binds: Vec<Bind>,
    _dir: TempDir,
}

impl Stage {
    /// Starts the sample `file`; `frontends` are imported one obleth each
    /// (`None`: the importer's choice).
    async fn start(file: &str, frontends: &[Option<&str>]) -> Self {
        let dir = TempDir::new();
        site_pem(
            dir.path(),
            "example.pem",
            &["shop.example.com", "api.example.com"],
        );
        let text = std::fs::read_to_string(Path::new(SAMPLES).join(file)).expect("sample");
        let (bind_list, server_list) = inventory(&text);
        let mut upstreams = Vec::new();
        let mut addresses = BTreeMap::new();
        for name in server_list {
            let u = Upstream::start(name.clone()).await;
            addresses.insert(name, u.addr);
            upstreams.push(u);
        }
        // Ports picked now may be taken by another test before HAProxy
        // binds them: then pick again.
        let mut attempts = 0;
        let (haproxy, binds, for_obleth) = loop {
            attempts += 1;
            let ports = free_ports::<16>();
            assert!(bind_list.len() * 2 <= ports.len());
            let binds: Vec<Bind> = bind_list
                .iter()
                .enumerate()
                .map(|(i, (frontend, ssl))| Bind {
                    frontend: frontend.clone(),
                    ssl: *ssl,
                    haproxy: ports[2 * i],
                    obleth: ports[2 * i + 1],
                })
                .collect();
            let for_haproxy = dir.path().join("haproxy.cfg");
            std::fs::write(
                &for_haproxy,
                rewrite(&text, dir.path(), &addresses, &binds, true),
            )
            .expect("write");
            let for_obleth = dir.path().join(file);
            std::fs::write(
                &for_obleth,
                rewrite(&text, dir.path(), &addresses, &binds, false),
            )
            .expect("write");
            let ports: Vec<u16> = binds.iter().map(|b| b.haproxy).collect();
            match HaProxy::start(&for_haproxy, &ports).await {
                Some(h) => break (h, binds, for_obleth),
                None => assert!(attempts < 4, "haproxy found its ports taken four times"),
            }
        };
        let mut obleths = Vec::new();
        for frontend in frontends {
            let args: Vec<&str> = frontend.map(|f| vec!["--frontend", f]).unwrap_or_default();
            let (yaml, _) = import(&for_obleth, &args);
            obleths.push(Obleth::start(&yaml).await);
        }
        Self {
            _upstreams: upstreams,
            haproxy,
            _obleths: obleths,
            binds,
            _dir: dir,
        }
    }

    /// The bind `n` (from 0) of `frontend`.
    fn bind(&self, frontend: &str, n: usize) -> &Bind {
        self.binds
            .iter()
            .filter(|b| b.frontend == frontend)
            .nth(n)
            .unwrap_or_else(|| panic!("no bind {n} in {frontend}"))
    }
}

/// One request of a comparison and what HAProxy is expected to do with it:
/// the backend that answers, or the status it answers itself.
struct Req {
    frontend: &'static str,
    /// Which bind of the frontend (from 0).
    bind: usize,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The last byte of the client's 127.0.0.x address.
    from: u8,
    expect: &'static str,
}

const fn get(
    frontend: &'static str,
    host: &'static str,
    path: &'static str,
    expect: &'static str,
) -> Req {
    Req {
        frontend,
        bind: 0,
        method: "GET",
        path,
        host,
        headers: &[],
        from: 1,
        expect,
    }
}

/// What a proxy did with a request, as far as the comparison cares.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// The backend of the server that answered (`x-served-by` up to `/`).
    backend: Option<String>,
    location: Option<String>,
    /// For answers the proxy wrote itself: their type and body.
    content_type: Option<String>,
    body: Option<String>,
    /// What the server received.
    host: Option<String>,
    edge: Option<String>,
    debug: Option<String>,
}

impl Seen {
    /// The backend, else the status: what `Req::expect` names.
    fn outcome(&self) -> String {
        self.backend
            .clone()
            .unwrap_or_else(|| self.status.to_string())
    }
}

async fn send(bind: &Bind, port: u16, req: &Req) -> Seen {
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::from([127, 0, 0, req.from]))
        .timeout(Duration::from_secs(30))
        .http1_only();
    if bind.ssl {
        client = client.danger_accept_invalid_certs(true);
    }
    let client = client.build().expect("client");
    let scheme = if bind.ssl { "https" } else { "http" };
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).expect("method");
    let mut r = client
        .request(method, format!("{scheme}://127.0.0.1:{port}{}", req.path))
        .header("host", req.host);
    for (n, v) in req.headers {
        r = r.header(*n, *v);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {} (Host {}): {e}", req.method, req.path, req.host));
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let served_by = h("x-served-by");
    let proxied = served_by.is_some();
    let status = resp.status().as_u16();
    let (location, host, edge, debug) = (
        h("location"),
        h("x-seen-host"),
        h("x-seen-edge"),
        h("x-seen-debug"),
    );
    let content_type = h("content-type");
    let body = resp.text().await.unwrap_or_default();
    let own = !proxied && !body.is_empty();
    Seen {
        status,
        backend: served_by.map(|s| s.split('/').next().unwrap_or("").to_string()),
        location,
        content_type: content_type.filter(|_| own),
        body: own.then_some(body),
        host,
        edge,
        debug,
    }
}

/// Sends every request to HAProxy and to obleth (each bind has a port of
/// each) and asserts that they did the same, and what HAProxy did.
async fn compare(stage: &Stage, requests: &[Req]) {
    let mut problems = Vec::new();
    for req in requests {
        let bind = stage.bind(req.frontend, req.bind);
        let haproxy = send(bind, bind.haproxy, req).await;
        let obleth = send(bind, bind.obleth, req).await;
        let what = format!(
            "{} {}{} (Host {}, from 127.0.0.{}, {:?})",
            req.method,
            if bind.ssl { "https " } else { "" },
            req.path,
            req.host,
            req.from,
            req.headers
        );
        if haproxy.outcome() != req.expect {
            problems.push(format!(
                "{what}: HAProxy gave {}, the test expects {} ({haproxy:?})",
                haproxy.outcome(),
                req.expect
            ));
        }
        if haproxy != obleth {
            problems.push(format!(
                "{what}:\n  haproxy {haproxy:?}\n  obleth  {obleth:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} requests differ:\n{}\nHAProxy's log:\n{}",
        problems.len(),
        requests.len(),
        problems.join("\n"),
        stage.haproxy.log()
    );
}

/// A request to fe_main's plain bind (its second, `:8080`).
const fn site(host: &'static str, path: &'static str, expect: &'static str) -> Req {
    Req {
        bind: 1,
        ..get("fe_main", host, path, expect)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multisite_import_routes_requests_as_haproxy_does() {
    // fe_main as the importer chooses it, and fe_http imported on its own.
    let stage = Stage::start(MULTISITE.file, &[None, Some("fe_http")]).await;
    const AUTH: (&str, &str) = ("authorization", "Bearer t");
    let requests = [
        site("shop.example.com", "/", "be_shop"),
        site("SHOP.example.com", "/cart?item=3", "be_shop"),
        Req {
            headers: &[("x-canary", "yes")],
            ..site("www.shop.example.com", "/cart", "be_shop_canary")
        },
        Req {
            headers: &[("x-canary", "ON")],
            ..site("shop.example.com", "/", "be_shop_canary")
        },
        Req {
            headers: &[("cookie", "a=1; canary=1")],
            ..site("shop.example.com", "/", "be_shop_canary")
        },
        Req {
            headers: &[("x-canary", "no")],
            ..site("shop.example.com", "/", "be_shop")
        },
        Req {
            headers: &[AUTH, ("x-tenant", "t1")],
            ..site("api.example.com", "/v2/users", "be_api_v2")
        },
        Req {
            method: "PUT",
            headers: &[AUTH],
            ..site("api.example.com", "/v2/users/1", "be_api_v2")
        },
        Req {
            method: "POST",
            headers: &[AUTH],
            ..site("api.example.com", "/orders", "be_api_write")
        },
        Req {
            method: "DELETE",
            headers: &[AUTH],
            ..site("api.example.com", "/orders/7", "be_api_write")
        },
        Req {
            headers: &[AUTH],
            ..site("API.EXAMPLE.COM", "/orders", "be_api")
        },
        site("api.example.com", "/orders", "401"),
        site("shop.example.com", "/img/logo.png", "be_static"),
        site("cdn.static.example.com", "/app.js", "be_static"),
        site("static.example.com", "/app.js", "be_shop"),
        site("blog.example.net", "/post/1", "be_blog"),
        site("www.blog.example.net", "/post/1", "be_shop"),
        site("shop.example.com", "/admin/", "403"),
        Req {
            from: 9,
            ..site("shop.example.com", "/admin/", "be_admin")
        },
        Req {
            from: 9,
            method: "DELETE",
            ..site("shop.example.com", "/admin/users/3", "403")
        },
        Req {
            from: 9,
            headers: &[AUTH],
            ..site("api.example.com", "/admin", "be_api")
        },
        Req {
            from: 66,
            ..site("shop.example.com", "/", "403")
        },
        site("anything.example.com", "/healthz", "200"),
        site("shop.example.com", "/haproxy-health", "200"),
        site("old-shop.example.com", "/p?q=1", "301"),
        site("legacy.example.org", "/x?y=2", "302"),
        site("www.legacy.example.org", "/", "302"),
        site("shop.example.com", "/admin/public/logo", "be_admin"),
        Req {
            method: "DELETE",
            ..site("shop.example.com", "/admin/public/x", "403")
        },
        site("doc.example.com", "/guide?v=2", "301"),
        site("doc.example.com", "/raw/file", "be_shop"),
        site("other.example.com", "/reports/42", "be_reports"),
        site("other.example.com", "/reports/abc", "be_shop"),
        Req {
            headers: &[("x-debug", "1"), ("x-edge", "client")],
            ..site("shop.example.com", "/", "be_shop")
        },
        // Over TLS: fe_main's first bind.
        Req {
            headers: &[AUTH],
            ..get("fe_main", "api.example.com", "/orders", "be_api")
        },
        get("fe_main", "shop.example.com", "/healthz", "200"),
        get("fe_main", "shop.example.com", "/", "be_shop"),
        // fe_http.
        get("fe_http", "shop.example.com", "/x?y=1", "301"),
    ];
    compare(&stage, &requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_import_routes_requests_as_haproxy_does() {
    let stage = Stage::start(DEBIAN.file, &[None]).await;
    let requests = [
        get("web", "www.example.com", "/", "app"),
        get("web", "www.example.com", "/static/app.css", "static"),
        get("web", "www.example.com", "/assets/logo.png", "static"),
        get("web", "www.example.com", "/staticx", "app"),
        Req {
            method: "POST",
            ..get("web", "www.example.com", "/login", "app")
        },
    ];
    compare(&stage, &requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_import_routes_requests_as_haproxy_does() {
    let stage = Stage::start(BENCH.file, &[None]).await;
    let requests = [
        get("fe", "127.0.0.1", "/bench", "be"),
        get("fe", "x.example", "/", "be"),
    ];
    compare(&stage, &requests).await;
}
