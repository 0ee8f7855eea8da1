//! The MCP gateway through the real binary, between a real MCP server and a
//! real MCP client (both the official Python SDK, `tests/mcp/`): allowed
//! tools listed and called with the server's credential in place of the
//! client's, the tool policy in `tools/list` and `tools/call`, the refusals
//! (disabled server, tenant without access, missing key, another key's
//! session), SSE and JSON answers, one usage row per call in ClickHouse and
//! a crashed row for a call cut off by a crash.
//! The server's `auth_header` is written once and never shown again.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEY_A: &str = "obk_mcp_tests_key_a_00000000000000";
const KEY_B: &str = "obk_mcp_tests_key_b_00000000000000";
const NARROW: &str = "obk_mcp_tests_narrow_000000000000";
const OUTSIDER: &str = "obk_mcp_tests_outsider_0000000000";
const TOOL_TOKEN: &str = "tool-token-4f1c9e2d7a";

/// The Python MCP server, killed with the test.
struct ToolServer {
    child: Child,
    port: u16,
    header_log: std::path::PathBuf,
}

impl ToolServer {
    async fn start(dir: &TempDir) -> Self {
        let port = free_port();
        let header_log = dir.path().join("tool-server-headers.jsonl");
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/mcp/tool_server.py"
            ))
            .arg(port.to_string())
            .arg(TOOL_TOKEN)
            .arg(&header_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("tool-server.log")).expect("log file"))
            .spawn()
            .expect("python3 runs the MCP server (scripts/setup.sh installs mcp)");
        // Held from here, so that a server that never starts is killed.
        let server = Self {
            child,
            port,
            header_log,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the MCP server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Every request's headers as the server received them.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.header_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(server: &ToolServer, telemetry: &str) -> String {
    format!(
        "telemetry: {telemetry}\n\
         seed:\n\
         \x20 tenants:\n\
         \x20   - {{ name: agents, allowed_mcp_servers: [tools, off] }}\n\
         \x20   - {{ name: narrow, allowed_mcp_servers: [tools/echo] }}\n\
         \x20   - {{ name: outsider }}\n\
         \x20 mcp_servers:\n\
         \x20   - {{ name: tools, url: '{url}', auth_header: 'X-Tool-Token: {TOOL_TOKEN}', allowed_tools: [echo, slow, whoami] }}\n\
         \x20   - {{ name: off, url: '{url}', enabled: false }}\n\
         \x20 keys:\n\
         \x20   - {{ tenant: agents, name: a, secret: {KEY_A} }}\n\
         \x20   - {{ tenant: agents, name: b, secret: {KEY_B} }}\n\
         \x20   - {{ tenant: narrow, name: n, secret: {NARROW} }}\n\
         \x20   - {{ tenant: outsider, name: o, secret: {OUTSIDER} }}\n\
         routes:\n  - name: mcp\n    match: {{ path: {{ prefix: /mcp/ }} }}\n    llm: {{}}\n",
        url = server.url()
    )
}

/// Usage shipped to `ch` at once.
fn shipping_to(ch: &ClickHouse) -> String {
    format!(
        "{{ replica: r1, clickhouse: {{ url: '{}', batch_interval: 100ms, timeout: 2s }} }}",
        ch.url()
    )
}

/// Runs the Python MCP client against `url` with `key` in `mode`.
fn run_client(url: &str, key: &str, mode: &str) -> Value {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py"))
        .args([url, key, mode])
        .output()
        .expect("python3 runs the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "client output: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "obleth-tests", "version": "1" }
        }
    })
}

/// POSTs one JSON-RPC message to `/mcp/{server}` as MCP clients do.
async fn post(
    obleth: &Obleth,
    server: &str,
    key: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = client()
        .post(obleth.url(&format!("/mcp/{server}")))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(session) = session {
        req = req.header("mcp-session-id", session);
    }
    req.send().await.expect("obleth answers")
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn allowed_tools_are_listed_and_called_with_the_servers_credential_and_refusals_are_documented(
) {
    let dir = TempDir::new();
    let server = ToolServer::start(&dir).await;
    let (_upstream, db, prefix) = shared_state().await;
    let body = format!(
        "store:\n  database_url: '{}'\nredis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n{}",
        db.url,
        config(&server, "{}")
    );
    let obleth = Obleth::start(&body).await;
    let url = obleth.url("/mcp/tools");

    // `legacy`: the initialize handshake, a session, answers as SSE;
    // `auto`: the SDK's own negotiation, answers as JSON.
    for mode in ["legacy", "auto"] {
        let seen = run_client(&url, KEY_A, mode);
        assert_eq!(
            seen["tools"],
            json!(["echo", "slow", "whoami"]),
            "{mode}: {seen}"
        );
        assert_eq!(seen["echo"]["text"], "hello", "{mode}: {seen}");
        let whoami: Value = serde_json::from_str(seen["whoami"]["text"].as_str().unwrap_or("{}"))
            .unwrap_or_else(|_| panic!("{mode}: {seen}"));
        assert_eq!(whoami["x-tool-token"], TOOL_TOKEN, "{mode}: {seen}");
        assert_eq!(whoami["authorization"], Value::Null, "{mode}: {seen}");
        assert_eq!(whoami["x-api-key"], Value::Null, "{mode}: {seen}");
        assert!(
            seen["delete_everything"]["refused"]
                .as_str()
                .is_some_and(|e| e.contains("not allowed")),
            "{mode}: {seen}"
        );
    }
    // A tenant granted one tool of the server sees and calls that one only.
    let narrow = run_client(&url, NARROW, "legacy");
    assert_eq!(narrow["tools"], json!(["echo"]), "{narrow}");
    assert_eq!(narrow["echo"]["text"], "hello", "{narrow}");
    assert!(narrow["whoami"]["refused"].is_string(), "{narrow}");

    // The server never saw a client's key, and always its own credential.
    let requests = server.seen();
    assert!(requests.len() >= 6, "{requests:?}");
    for r in &requests {
        let text = r.to_string();
        for key in [KEY_A, NARROW] {
            assert!(
                !text.contains(key),
                "the client's key reached the server: {text}"
            );
        }
        assert_eq!(r["headers"]["x-tool-token"], TOOL_TOKEN, "{text}");
        assert!(r["headers"].get("authorization").is_none(), "{text}");
    }
    // No refused call reached the server.
    assert!(!requests
        .iter()
        .any(|r| r.to_string().contains("delete_everything")));

    // Refusals, each with its status and code.
    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
    let cases = [
        ("off", Some(KEY_A), 403, "mcp_server_disabled"),
        ("tools", Some(OUTSIDER), 403, "mcp_server_not_allowed"),
        ("tools", None, 401, "missing_api_key"),
        (
            "tools",
            Some("obk_not_a_key_at_all_00000000000"),
            401,
            "invalid_api_key",
        ),
        ("nowhere", Some(KEY_A), 404, "mcp_server_not_found"),
    ];
    for (name, key, status, code) in cases {
        let got = error_code(post(&obleth, name, key, None, &list).await).await;
        assert_eq!(got, (status, code.to_string()), "{name} {key:?}");
    }
    let bad = client()
        .post(&url)
        .bearer_auth(KEY_A)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad).await, (400, "invalid_json".to_string()));

    // A session belongs to the key that opened it.
    let opened = post(&obleth, "tools", Some(KEY_A), None, &initialize()).await;
    assert_eq!(opened.status(), 200);
    let session = header_text(&opened, "mcp-session-id");
    assert!(!session.is_empty(), "the server opened a session");
    let _ = opened.bytes().await;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let ack = post(&obleth, "tools", Some(KEY_A), Some(&session), &initialized).await;
    assert_eq!(ack.status(), 202);
    let foreign = post(&obleth, "tools", Some(KEY_B), Some(&session), &list).await;
    assert_eq!(
        error_code(foreign).await,
        (404, "session_not_found".to_string())
    );
    let invented = post(
        &obleth,
        "tools",
        Some(KEY_A),
        Some("made-up-session"),
        &list,
    )
    .await;
    assert_eq!(
        error_code(invented).await,
        (404, "session_not_found".to_string())
    );
    let own = post(&obleth, "tools", Some(KEY_A), Some(&session), &list).await;
    assert_eq!(own.status(), 200);
    assert!(header_text(&own, "content-type").starts_with("text/event-stream"));
    let events = own.text().await.unwrap();
    assert!(
        events.contains("whoami") && !events.contains("delete_everything"),
        "{events}"
    );
    // The session is shared by replicas through Redis: a second obleth on
    // the same store and Redis knows whose it is.
    let replica = Obleth::start(&body).await;
    let foreign = post(&replica, "tools", Some(KEY_B), Some(&session), &list).await;
    assert_eq!(
        error_code(foreign).await,
        (404, "session_not_found".to_string())
    );
    let own = post(&replica, "tools", Some(KEY_A), Some(&session), &list).await;
    assert_eq!(own.status(), 200);
    let _ = own.bytes().await;
    // Ending it forgets it.
    let ended = client()
        .delete(&url)
        .bearer_auth(KEY_A)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    let after = post(&obleth, "tools", Some(KEY_A), Some(&session), &list).await;
    assert_eq!(
        error_code(after).await,
        (404, "session_not_found".to_string())
    );

    let ok = obleth
        .metric(r#"obleth_mcp_requests_total{server="tools",status="2xx"}"#)
        .await;
    assert!(ok >= 6.0, "{ok}");
    let refused = obleth
        .metric(r#"obleth_mcp_requests_total{server="tools",status="4xx"}"#)
        .await;
    assert!(refused >= 3.0, "{refused}");
    assert!(obleth.metrics_text().await.contains(r#"server="-""#));
}

#[tokio::test]
async fn every_mcp_call_is_a_usage_row_in_clickhouse_with_its_tool() {
    let dir = TempDir::new();
    let server = ToolServer::start(&dir).await;
    let ch = ClickHouse::start().await;
    let telemetry = shipping_to(&ch);
    let obleth = Obleth::start(&config(&server, &telemetry)).await;
    let seen = run_client(&obleth.url("/mcp/tools"), KEY_A, "legacy");
    assert_eq!(seen["echo"]["text"], "hello", "{seen}");
    ch.until_answer(
        "SELECT count() FROM obleth.usage WHERE mcp_method = 'tools/call' AND mcp_tool = 'echo' AND status = 200",
        "1",
    )
    .await;
    ch.until_answer(
        "SELECT status, model, mcp_server FROM obleth.usage WHERE mcp_tool = 'delete_everything' FORMAT CSV",
        "403,\"mcp:tools\",\"tools\"",
    )
    .await;
    ch.until_answer(
        "SELECT count() > 0 FROM obleth.usage WHERE mcp_method = 'tools/list'",
        "1",
    )
    .await;
    let tenant = Admin::of(&obleth)
        .ok("GET", "/tenants/agents", None, 200)
        .await;
    let tenants = ch
        .query("SELECT DISTINCT tenant FROM obleth.usage WHERE mcp_server = 'tools' FORMAT CSV")
        .await
        .unwrap();
    assert_eq!(
        tenants.trim(),
        format!("\"{}\"", tenant["id"].as_str().unwrap())
    );
    let (total, ttfb) = (
        ch.query("SELECT min(total_ms) FROM obleth.usage WHERE mcp_tool = 'echo'")
            .await
            .unwrap(),
        ch.query("SELECT min(ttfb_ms) FROM obleth.usage WHERE mcp_tool = 'echo'")
            .await
            .unwrap(),
    );
    let n = |s: String| s.trim().parse::<u64>().unwrap_or(0);
    assert!(n(total) >= n(ttfb), "latency recorded");
}

#[tokio::test]
async fn the_auth_header_is_never_shown_logged_or_stored_in_clear() {
    let dir = TempDir::new();
    let server = ToolServer::start(&dir).await;
    let (_upstream, db, prefix) = shared_state().await;
    let body = format!(
        "store:\n  database_url: '{}'\nredis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n\
         seed:\n  tenants: [{{ name: agents, allowed_mcp_servers: [vault] }}]\n\
         \x20 keys: [{{ tenant: agents, name: a, secret: {KEY_A} }}]\n\
         routes:\n  - name: mcp\n    match: {{ path: {{ prefix: /mcp/ }} }}\n    llm: {{}}\n",
        db.url
    );
    let obleth = Obleth::start_with(
        &body,
        "json",
        &[("OBLETH_ENCRYPTION_KEY", "mcp-test-encryption-key")],
    )
    .await;
    let admin = Admin::of(&obleth);
    let secret = format!("X-Tool-Token: {TOOL_TOKEN}");
    let made = admin
        .post(
            "/mcp-servers",
            json!({ "name": "vault", "url": server.url(), "auth_header": secret }),
            201,
        )
        .await;
    assert_eq!(made["auth_header_set"], true, "{made}");
    let bad = admin
        .post(
            "/mcp-servers",
            json!({ "name": "bad", "url": server.url(), "auth_header": "no colon here" }),
            400,
        )
        .await;
    assert_eq!(bad["error"]["field"], "auth_header");
    let patched = admin
        .patch(
            "/mcp-servers/vault",
            json!({ "allowed_tools": ["whoami"] }),
            200,
        )
        .await;
    assert_eq!(
        patched["auth_header_set"], true,
        "kept on a patch without it"
    );

    // It works: the server sees it.
    let seen = run_client(&obleth.url("/mcp/vault"), KEY_A, "legacy");
    assert!(
        seen["whoami"]["text"]
            .as_str()
            .is_some_and(|t| t.contains(TOOL_TOKEN)),
        "{seen}"
    );
    assert_eq!(seen["tools"], json!(["whoami"]), "{seen}");

    // Nowhere else.
    let shown = [
        admin.ok("GET", "/mcp-servers", None, 200).await,
        admin.ok("GET", "/mcp-servers/vault", None, 200).await,
        admin
            .ok("GET", "/audit?entity_type=mcp_server", None, 200)
            .await,
    ];
    for value in &shown {
        assert!(!value.to_string().contains(TOOL_TOKEN), "{value}");
    }
    assert!(
        shown[2].to_string().contains("auth_header_set"),
        "{}",
        shown[2]
    );
    let mut conn = db.connect().await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT coalesce(auth_header, '') FROM mcp_servers UNION ALL SELECT detail FROM audit_log",
    )
    .fetch_all(&mut conn)
    .await
    .expect("rows");
    assert!(rows.iter().any(|(h,)| h.starts_with("enc:v1:")), "{rows:?}");
    for (text,) in &rows {
        assert!(!text.contains(TOOL_TOKEN), "stored in clear: {text}");
    }
    let access = obleth.access_lines(1).await.join("\n");
    assert!(access.contains("/mcp/vault"), "{access}");
    for log in [access, obleth.stderr()] {
        assert!(!log.contains(TOOL_TOKEN), "{log}");
    }
    // Cleared with null.
    let cleared = admin
        .patch("/mcp-servers/vault", json!({ "auth_header": null }), 200)
        .await;
    assert_eq!(cleared["auth_header_set"], false, "{cleared}");
}

#[tokio::test]
async fn a_call_cut_off_by_a_crash_leaves_a_crashed_row_naming_its_tool() {
    let dir = TempDir::new();
    let server = ToolServer::start(&dir).await;
    let ch = ClickHouse::start().await;
    let telemetry = shipping_to(&ch);
    let body = config(&server, &telemetry);
    let wal = dir.path().join("wal").display().to_string();
    let env = [("OBLETH_WAL_PATH", wal.as_str())];
    let obleth = Obleth::start_with(&body, "off", &env).await;
    let opened = post(&obleth, "tools", Some(KEY_A), None, &initialize()).await;
    let session = header_text(&opened, "mcp-session-id");
    let _ = opened.bytes().await;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let _ = post(&obleth, "tools", Some(KEY_A), Some(&session), &initialized).await;
    let call = client()
        .post(obleth.url("/mcp/tools"))
        .bearer_auth(KEY_A)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("x-request-id", "mcp-cut-off")
        .json(&json!({ "jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": { "name": "slow", "arguments": { "seconds": 30 } } }))
        .send();
    let pending = tokio::spawn(call);
    // The call is at the server when obleth dies.
    for _ in 0..100 {
        if server
            .seen()
            .iter()
            .any(|r| r["headers"]["x-request-id"] == "mcp-cut-off")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    obleth.signal("KILL");
    let _ = pending.await;
    drop(obleth);

    let _restarted = Obleth::start_with(&body, "off", &env).await;
    ch.until_answer(
        "SELECT outcome, status, mcp_method, mcp_tool FROM obleth.usage \
         WHERE request_id = 'mcp-cut-off' FORMAT CSV",
        "\"crashed\",0,\"tools/call\",\"slow\"",
    )
    .await;
}
