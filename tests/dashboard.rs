//! The operator dashboard under `/ui/` on the admin listener: sign-in with
//! `DASHBOARD_PASSWORD`, the signed session cookie, CSRF and cross-site
//! refusal, calls to the admin API on the operator's behalf (audited as
//! them), start-up refusing weak secrets in production, and the pages
//! driven in a real headless Chromium (`tests/browser/dashboard.cjs`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "dashboard-test-session-secret-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `llm` route to `upstream`, a seeded model, the dashboard, and
/// `extra` top-level sections.
fn config(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        "pools:\n{}routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n\
         seed:\n  models: [{{ name: mock-model, pool: p }}]\n\
         dashboard: {{ assets: '{}' }}\n{extra}",
        pool("p", &[upstream], ""),
        repo().join("dashboard/dist").display()
    )
}

async fn start(extra: &str) -> (MockUpstream, Obleth) {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start_with(
        &config(&upstream, extra),
        "httplog",
        &[
            ("DASHBOARD_PASSWORD", PASSWORD),
            ("DASHBOARD_SESSION_SECRET", SECRET),
        ],
    )
    .await;
    (upstream, obleth)
}

/// A client that keeps no cookies: each request says which it sends.
struct Ui {
    base: String,
    client: reqwest::Client,
}

impl Ui {
    fn of(obleth: &Obleth) -> Self {
        Self {
            base: format!("http://{}", obleth.admin),
            client: client(),
        }
    }

    async fn sign_in(&self, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/ui/login", self.base))
            .json(&json!({ "password": password, "operator": "alice" }))
            .send()
            .await
            .expect("dashboard answers")
    }

    /// Signs in; the session cookie and the CSRF token.
    async fn session(&self) -> (String, String) {
        let resp = self.sign_in(PASSWORD).await;
        assert_eq!(resp.status(), 200);
        let set = header_text(&resp, "set-cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP: {set}");
        let cookie = set.split(';').next().unwrap_or_default().to_string();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["operator"], "alice");
        (cookie, body["csrf"].as_str().expect("csrf").to_string())
    }

    fn request(&self, method: &str, path: &str, cookie: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("cookie", cookie)
    }
}

/// A session cookie signed with the real secret, as `Sessions` makes them,
/// for `operator` until `expires`.
fn signed_cookie(operator: &str, expires: u64) -> String {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let body = format!("{}.{expires}.{}", hex::encode(operator), "ab".repeat(16));
    let key = PKey::hmac(SECRET.as_bytes()).expect("key");
    let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("signer");
    signer
        .update(format!("session|{body}").as_bytes())
        .expect("mac");
    let mac = hex::encode(signer.sign_to_vec().expect("mac"));
    format!("obleth_session={body}.{mac}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_repeated_failures_must_wait() {
    let (_upstream, obleth) = start("").await;
    let ui = Ui::of(&obleth);
    for _ in 0..5 {
        let resp = ui.sign_in("not the password").await;
        assert_eq!(resp.status(), 401);
        assert!(header_text(&resp, "set-cookie").is_empty());
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["message"], "wrong password");
    }
    // Even the right password waits now.
    let resp = ui.sign_in(PASSWORD).await;
    assert_eq!(resp.status(), 429);
    let wait: u64 = header_text(&resp, "retry-after")
        .parse()
        .expect("Retry-After");
    assert!((1..=60).contains(&wait), "{wait}");
}

#[tokio::test]
async fn a_session_acts_as_its_operator_and_forged_expired_or_cross_site_requests_are_refused() {
    let (_upstream, obleth) = start("").await;
    let ui = Ui::of(&obleth);
    let (cookie, csrf) = ui.session().await;

    // Reads need the session and nothing else; the admin token is never
    // shown to the browser.
    let resp = ui
        .request("GET", "/ui/api/v1/models", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.text().await.unwrap().contains(ADMIN_TOKEN));
    let resp = ui
        .request("GET", "/ui/session", &cookie)
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().contains(ADMIN_TOKEN));
    let resp = ui
        .request("GET", "/ui/metrics", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("obleth_http_requests_total"));

    // A mutation needs the CSRF token, and must come from this site.
    let tenant = json!({ "name": "from-the-dashboard" });
    let post_tenant = |headers: &[(&str, &str)]| {
        let mut req = ui
            .request("POST", "/ui/api/v1/tenants", &cookie)
            .json(&tenant);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req
    };
    let refusals: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-csrf-token", &csrf), ("origin", "https://evil.example")],
        &[("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")],
    ];
    for headers in refusals {
        let status = post_tenant(headers).send().await.unwrap().status();
        assert_eq!(status, 403, "{headers:?}");
    }
    let created = ui
        .request("POST", "/ui/api/v1/tenants", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", format!("http://{}", obleth.admin))
        .json(&tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // The API's own validation message comes back as it is.
    let invalid = ui
        .request("POST", "/ui/api/v1/tenants", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({ "name": "from-the-dashboard" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 409);
    let body: Value = invalid.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("already exists"), "{body}");

    // Audited as the signed-in operator; nothing reached the store otherwise.
    let (_, audit) = Admin::of(&obleth)
        .call("GET", "/audit?entity_type=tenant", None)
        .await;
    let actors: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["dashboard:alice"], "{audit}");

    // No session, a forged one, an expired one, another secret's: 401.
    let forged = cookie.replacen(&hex::encode("alice"), &hex::encode("admin"), 1);
    let expired = signed_cookie("alice", now() - 1);
    for bad in [
        "",
        "obleth_session=garbage",
        forged.as_str(),
        expired.as_str(),
    ] {
        let resp = ui
            .request("GET", "/ui/api/v1/tenants", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
    }
    let still_valid = signed_cookie("alice", now() + 60);
    let resp = ui
        .request("GET", "/ui/api/v1/tenants", &still_valid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the same signing, not yet expired");

    // Behind a TLS-terminating proxy the cookie is Secure.
    let resp = ui
        .client
        .post(format!("{}/ui/login", ui.base))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(header_text(&resp, "set-cookie").contains("; Secure"));

    // Signing out needs the CSRF token too, and clears the cookie.
    let out = ui
        .request("POST", "/ui/logout", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    let out = ui
        .request("POST", "/ui/logout", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(header_text(&out, "set-cookie").contains("Max-Age=0"));

    // The pages are served with a policy that loads nothing from elsewhere.
    let page = ui
        .client
        .get(format!("{}/ui/tenants", ui.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(header_text(&page, "content-security-policy").contains("default-src 'self'"));
    assert!(page.text().await.unwrap().contains("/ui/assets/"));
}

/// Runs `obleth run` on `body` (production: no generated admin token) with
/// `env`; the exit status and stderr if it exited within a few seconds.
fn run_briefly(body: &str, env: &[(&str, &str)]) -> (Option<std::process::ExitStatus>, String) {
    let dir = TempDir::new();
    let [http, admin, metrics] = free_ports::<3>();
    let path = dir.path().join("obleth.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{ name: http, address: '127.0.0.1:{http}' }}]\nadmin: {{ address: '127.0.0.1:{admin}' }}\n\
             metrics: {{ address: '127.0.0.1:{metrics}' }}\nstore: {{ database_url: 'sqlite://{}' }}\n{body}",
            dir.path().join("obleth.db").display()
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["run", "-c"])
        .arg(&path)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_WAL_PATH", dir.path().join("wal"))
        .env_remove("DASHBOARD_PASSWORD")
        .env_remove("DASHBOARD_SESSION_SECRET")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (status, std::fs::read_to_string(&stderr).unwrap_or_default())
}

/// A configuration addition, the environment, and the refusal expected.
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn production_start_up_refuses_missing_or_default_dashboard_secrets() {
    let strong = ("DASHBOARD_SESSION_SECRET", SECRET);
    let cases: [Refusal; 5] = [
        (
            "",
            vec![("DASHBOARD_PASSWORD", "obleth"), strong],
            "DASHBOARD_PASSWORD is the documented development default",
        ),
        (
            "",
            vec![
                ("DASHBOARD_PASSWORD", PASSWORD),
                (
                    "DASHBOARD_SESSION_SECRET",
                    "dev-session-secret-change-in-production",
                ),
            ],
            "DASHBOARD_SESSION_SECRET is the documented development default",
        ),
        (
            "",
            vec![("DASHBOARD_PASSWORD", PASSWORD)],
            "DASHBOARD_SESSION_SECRET is not set",
        ),
        ("", vec![strong], "DASHBOARD_PASSWORD is not set"),
        (
            "dashboard: { enabled: true }\n",
            vec![],
            "DASHBOARD_PASSWORD is not set",
        ),
    ];
    for (body, env, why) in cases {
        let (status, stderr) = run_briefly(body, &env);
        let status = status.unwrap_or_else(|| panic!("started anyway with {env:?}:\n{stderr}"));
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(why), "expected {why:?}:\n{stderr}");
    }
    // Without any dashboard secret, production runs without the dashboard.
    let (status, stderr) = run_briefly("", &[]);
    assert!(status.is_none(), "refused to start:\n{stderr}");
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let ch = ClickHouse::start().await;
    let (_upstream, obleth) = start(&format!(
        "telemetry: {{ clickhouse: {{ url: '{}', batch_interval: 100ms, timeout: 2s }} }}\n",
        ch.url()
    ))
    .await;
    let shots = repo().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/dashboard.cjs"))
        .env("NODE_PATH", repo().join("dashboard/node_modules"))
        .env("DASHBOARD_URL", format!("http://{}/ui/", obleth.admin))
        .env("GATEWAY_URL", obleth.url(""))
        .env("ADMIN_URL", format!("http://{}", obleth.admin))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("DASHBOARD_PASSWORD", PASSWORD)
        .env("DASHBOARD_SESSION_SECRET", SECRET)
        .env("SCREENSHOTS", &shots)
        .output()
        .await
        .expect("node runs (scripts/setup.sh installs it with the dashboard)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the browser run failed:\n{log}\nobleth:\n{}",
        obleth.stderr()
    );
    for page in [
        "sign-in",
        "overview",
        "fair-share",
        "tenants",
        "groups",
        "keys",
        "models",
        "usage",
        "audit",
        "pools",
        "phone-overview",
    ] {
        let shot = shots.join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot of {page}:\n{log}"
        );
    }
}
