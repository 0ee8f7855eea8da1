//! Source ACLs: `match.source` picks a route by the client's address and
//! `deny_source` refuses one with 403, both on the address obleth believes
//! (the peer, or what a trusted proxy's `X-Forwarded-For` names), never on
//! a header an untrusted client wrote.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const KEY: &str = "obk_acl_0000000000000000000000000";

fn config(upstream: &MockUpstream) -> String {
    format!(
        "server: {{ threads: 2, grace: 5s, trusted_proxies: [127.0.0.1] }}
pools:\n{}\
seed:
  tenants: [{{ name: acme }}]
  models: [{{ name: m, pool: p }}]
  keys: [{{ tenant: acme, name: k, secret: {KEY} }}]
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    deny_source: [198.51.100.0/24]
    llm: {{}}
  - name: office
    match: {{ source: [127.0.0.0/8, '2001:db8::/32'] }}
    deny_source: 127.0.0.3
    respond: {{ status: 200, body: office }}
  - name: world
    respond: {{ status: 200, body: world }}
",
        pool("p", &[upstream], "")
    )
}

async fn get(client: &reqwest::Client, obleth: &Obleth, forwarded: Option<&str>) -> (u16, String) {
    let mut req = client.get(obleth.url("/"));
    if let Some(xff) = forwarded {
        req = req.header("x-forwarded-for", xff);
    }
    let resp = req.send().await.expect("answer");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn match_source_picks_the_route_by_the_address_obleth_believes() {
    let upstream = mock("a").await;
    let obleth = Obleth::start(&config(&upstream)).await;
    let proxy = client_from(1);
    let stranger = client_from(2);

    assert_eq!(get(&stranger, &obleth, None).await, (200, "office".into()));
    // The trusted proxy vouches for a client outside the office network.
    assert_eq!(
        get(&proxy, &obleth, Some("203.0.113.9")).await,
        (200, "world".into())
    );
    assert_eq!(
        get(&proxy, &obleth, Some("203.0.113.9, 127.0.0.1")).await,
        (200, "world".into()),
        "trusted hops are skipped"
    );
    // An untrusted peer cannot talk itself out of (or into) a network.
    assert_eq!(
        get(&stranger, &obleth, Some("203.0.113.9")).await,
        (200, "office".into())
    );
}

#[tokio::test]
async fn deny_source_answers_403_plain_or_in_the_openai_shape() {
    let upstream = mock("a").await;
    let obleth = Obleth::start(&config(&upstream)).await;

    let denied = client_from(3);
    let (status, body) = get(&denied, &obleth, None).await;
    assert_eq!(status, 403);
    assert!(
        body.starts_with("403 requests from this address are not allowed"),
        "{body}"
    );

    // A chat completion through the trusted proxy for the client `forwarded`.
    let proxy = client_from(1);
    let chat_for = |forwarded: &'static str| {
        proxy
            .post(obleth.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-forwarded-for", forwarded)
            .json(&two_token_chat("m"))
            .send()
    };
    let refused = chat_for("198.51.100.20").await.expect("answer");
    assert_eq!(refused.status(), 403);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "source_denied");
    assert_eq!(error["error"]["type"], "permission_error");
    assert_eq!(
        upstream.requests(),
        0,
        "a denied request never reaches the upstream"
    );

    let allowed = chat_for("203.0.113.20").await.expect("answer");
    assert_eq!(allowed.status(), 200);
}

#[test]
fn a_source_that_is_not_an_address_is_a_configuration_error() {
    let dir = TempDir::new();
    let path = dir.path().join("acl.yaml");
    std::fs::write(
        &path,
        "routes:\n  - name: r\n    match: { source: [10.0.0.0/33] }\n    deny_source: [nowhere]\n    respond: { status: 200 }\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("routes[0].match.source[0]"), "{stderr}");
    assert!(stderr.contains("routes[0].deny_source[0]"), "{stderr}");
    assert!(
        stderr.contains("\"nowhere\" is not a CIDR or IP address"),
        "{stderr}"
    );
}
