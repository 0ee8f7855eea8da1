//! Where LLM requests go: `base_url` models reached over TLS (a hosted API
//! stand-in: an obleth terminating TLS with a certificate of the test's own
//! CA in front of the mock), with their path, `Host` and upstream key, and
//! model aliases resolving to their model and its upstream.

mod common;
mod edge_kit;

use common::*;
use edge_kit::*;
use serde_json::{json, Value};

const KEY: &str = "obk_models_0000000000000000000000";

/// The hosted API stand-in: TLS on `localhost` (and 127.0.0.1), serving
/// only `Host: localhost:PORT` under `/hosted/v1/`, mapped to the mock's
/// `/v1/`; anything else gets a 421 that names what arrived.
struct HostedApi {
    port: u16,
    ca_file: String,
    obleth: Obleth,
    _dir: TempDir,
}

impl HostedApi {
    async fn start(upstream: &MockUpstream) -> Self {
        let dir = TempDir::new();
        let ca = Ca::new("hosted API test CA");
        let ca_file = ca.write(dir.path(), "ca.pem").display().to_string();
        let (cert, key) = ca
            .issue(&["localhost"], &["127.0.0.1"], Validity::Current)
            .write(dir.path(), "hosted");
        let port = free_port();
        let obleth = Obleth::start(&format!(
            "listeners:\n  - name: https\n    address: 127.0.0.1:{port}\n    tls: {{ cert: '{cert}', key: '{key}' }}\n\
             pools:\n{}routes:\n\
             \x20 - name: hosted\n    match: {{ host: localhost, path: {{ prefix: /hosted/v1/ }} }}\n\
             \x20   proxy: {{ pool: m, rewrite_prefix: {{ from: /hosted/v1/, to: /v1/ }} }}\n\
             \x20 - name: misdirected\n    respond: {{ status: 421, body: misdirected }}\n",
            pool("m", &[upstream], "")
        ))
        .await;
        Self {
            port,
            ca_file,
            obleth,
            _dir: dir,
        }
    }
}

fn gateway_config(hosted_port: u16, local: &MockUpstream) -> String {
    format!(
        "pools:\n{}\
seed:
  tenants:
    - {{ name: acme, allowed_models: [hosted, local] }}
  models:
    - name: hosted
      base_url: 'https://localhost:{hosted_port}/hosted/v1'
      aliases: [hosted-latest]
      upstream_model: vendor/hosted-1
      upstream_key: sk-hosted-secret
    - {{ name: local, pool: p, aliases: [local-a, local-b], upstream_model: vendor/local-1 }}
  keys:
    - {{ tenant: acme, name: k, secret: {KEY} }}
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{}}
",
        pool("p", &[local], "")
    )
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }], "max_tokens": 3 })
}

async fn ask(obleth: &Obleth, model: &str) -> reqwest::Response {
    client()
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat(model))
        .send()
        .await
        .expect("an answer")
}

#[tokio::test]
async fn base_url_models_are_reached_over_verified_tls_and_aliases_resolve() {
    let (hosted_mock, local) = (mock("hosted").await, mock("local").await);
    let hosted = HostedApi::start(&hosted_mock).await;
    // obleth has no CA setting for base_url models (they always verify);
    // OpenSSL's default store, which `SSL_CERT_FILE` replaces, is what it
    // trusts.
    let gateway = Obleth::start_with(
        &gateway_config(hosted.port, &local),
        "httplog",
        &[("SSL_CERT_FILE", hosted.ca_file.as_str())],
    )
    .await;

    for (n, model) in ["hosted", "hosted-latest"].into_iter().enumerate() {
        let r = ask(&gateway, model).await;
        assert_eq!(r.status(), 200, "{model}: {}", gateway.stderr());
        assert_eq!(served_by(&r), "hosted", "{model}");
        assert_eq!(
            r.headers()["x-mock-saw-authorization"],
            "Bearer sk-hosted-secret",
            "{model}: the model's upstream key replaces the client's"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["model"], "vendor/hosted-1", "{model}: {body}");
        assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");
        // The hop was TLS, with the URL's Host and path.
        let lines = hosted.obleth.access_lines(n + 1).await;
        let line = &lines[n];
        assert!(
            line.contains(" https hosted ")
                && line.contains(" 200 ")
                && line.contains("\"POST /hosted/v1/chat/completions HTTP/1.1\""),
            "{line}"
        );
    }
    for model in ["local", "local-a", "local-b"] {
        let r = ask(&gateway, model).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(served_by(&r), "local", "{model}");
        assert!(
            r.headers().get("x-mock-saw-authorization").is_none(),
            "{model}: the client's key is not passed on"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["model"], "vendor/local-1", "{model}: {body}");
    }
    // An alias is no name of its own: one model's alias does not reach
    // another, and an unknown name is a 404.
    let r = ask(&gateway, "hosted-a").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert_eq!(hosted_mock.requests(), 2);
    assert_eq!(local.requests(), 3);
}

#[tokio::test]
async fn a_base_url_whose_certificate_is_not_trusted_is_never_sent_the_request() {
    let (hosted_mock, local) = (mock("hosted").await, mock("local").await);
    let hosted = HostedApi::start(&hosted_mock).await;
    // Without the CA, the system roots do not vouch for the stand-in.
    let gateway = Obleth::start(&gateway_config(hosted.port, &local)).await;
    let r = ask(&gateway, "hosted").await;
    // base_url models have one server and one retry: the refused
    // handshake ejects it and the retry finds no server left.
    assert_eq!(r.status(), 503, "{}", gateway.stderr());
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        hosted_mock.requests(),
        0,
        "nothing went over an unverified hop"
    );
    assert!(
        gateway.stderr().contains("certificate verify failed"),
        "{}",
        gateway.stderr()
    );
    // The pool models still work.
    let r = ask(&gateway, "local-a").await;
    assert_eq!(r.status(), 200);
}
