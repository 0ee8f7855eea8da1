//! Routes through the real binary: every match kind and action, the default
//! route, the forwarding headers, and the request id on every answer.

mod common;
mod edge_kit;

use common::*;
use edge_kit::*;
use serde_json::Value;

async fn echo(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200, "echo answers 200");
    serde_json::from_str(&resp.text().await.expect("body")).expect("echo JSON")
}

#[tokio::test]
async fn each_match_kind_selects_its_route_and_first_match_wins() {
    let a = mock("a").await;
    let b = mock("b").await;
    let config = format!(
        "pools:\n{}{}routes:
  - name: exact-host
    match: {{ host: api.example.com }}
    proxy: {{ pool: a }}
  - name: wildcard-host
    match: {{ host: '*.example.org' }}
    proxy: {{ pool: b }}
  - name: exact-path
    match: {{ path: {{ exact: /echo/exact }} }}
    respond: {{ status: 201, body: exact }}
  - name: regex-path
    match: {{ path: {{ regex: '^/echo/[0-9]+$' }} }}
    respond: {{ status: 202, body: regex }}
  - name: method
    match: {{ method: [DELETE], path: {{ prefix: /echo }} }}
    respond: {{ status: 203, body: method }}
  - name: header-present
    match: {{ headers: [{{ name: x-present, present: true }}] }}
    respond: {{ status: 200, body: present }}
  - name: header-absent-and-equals
    match: {{ headers: [{{ name: x-env, equals: canary }}, {{ name: x-block, present: false }}] }}
    respond: {{ status: 200, body: equals }}
  - name: header-regex
    match: {{ headers: [{{ name: x-user, regex: '^u-[0-9]+$' }}] }}
    respond: {{ status: 200, body: regex-header }}
  - name: prefix
    match: {{ path: {{ prefix: /echo }} }}
    proxy: {{ pool: a }}
  - name: default
    respond: {{ status: 418, body: default }}
",
        pool("a", &[&a], ""),
        pool("b", &[&b], "")
    );
    let obleth = Obleth::start(&config).await;
    let c = client();
    let get = |path: &str| c.get(obleth.url(path));

    for (host, server) in [
        ("api.example.com", "a"),
        ("deep.sub.EXAMPLE.org:8080", "b"),
        // The bare domain does not match *.example.org.
        ("example.org", "a"),
    ] {
        let r = get("/echo").header("host", host).send().await.unwrap();
        assert_eq!(served_by(&r), server, "host {host}");
    }

    for (req, status, body) in [
        (get("/echo/exact"), 201, "exact"),
        (get("/echo/42"), 202, "regex"),
        (c.delete(obleth.url("/echo/x")), 203, "method"),
        (get("/other").header("x-present", ""), 200, "present"),
        (get("/other").header("x-env", "canary"), 200, "equals"),
        (
            get("/other")
                .header("x-env", "canary")
                .header("x-block", "1"),
            418,
            "default",
        ),
        (get("/other").header("x-user", "u-17"), 200, "regex-header"),
        (get("/other").header("x-user", "bob"), 418, "default"),
        (get("/echo/exact/no"), 200, ""),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let text = r.text().await.unwrap();
        if !body.is_empty() {
            assert_eq!(text, body);
        }
    }
}

#[tokio::test]
async fn proxy_rewrites_prefix_and_edits_headers() {
    let a = mock("a").await;
    let config = format!(
        "pools:\n{}routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    proxy:
      pool: a
      rewrite_prefix: {{ from: /api, to: /echo }}
      request_headers:
        set: {{ x-added: yes, x-replaced: new }}
        remove: [x-secret]
      response_headers:
        set: {{ x-served-via: obleth }}
        remove: [x-mock-server]
",
        pool("a", &[&a], "")
    );
    let obleth = Obleth::start(&config).await;
    let r = client()
        .get(obleth.url("/api/items?page=2"))
        .header("x-secret", "s3cr3t")
        .header("x-replaced", "old")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-served-via"], "obleth");
    assert!(r.headers().get("x-mock-server").is_none());
    let body = echo(r).await;
    assert_eq!(body["path"], "/echo/items");
    assert_eq!(body["query"], "page=2");
    assert_eq!(body["headers"]["x-added"], "yes");
    assert_eq!(body["headers"]["x-replaced"], "new");
    assert!(body["headers"].get("x-secret").is_none());
}

#[tokio::test]
async fn redirect_renders_its_location_template() {
    let obleth = Obleth::start(
        "routes:
  - name: to-https
    redirect: { status: 308, location: 'https://{host}{uri}' }
",
    )
    .await;
    let r = client()
        .post(obleth.url("/a/b?x=1"))
        .header("host", "Example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://example.com/a/b?x=1");
}

#[tokio::test]
async fn no_matching_route_is_a_404() {
    let obleth = Obleth::start("routes:\n  - name: only\n    match: { path: { exact: /x } }\n    respond: { status: 204 }\n").await;
    let r = client().get(obleth.url("/y")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(obleth.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

/// GETs /echo as a client behind a proxy: with `X-Forwarded-For:
/// forwarded_for`, `X-Forwarded-Proto: https` and the `extra` header.
async fn forwarded(obleth: &Obleth, forwarded_for: &str, extra: (&str, &str)) -> reqwest::Response {
    client()
        .get(obleth.url("/echo"))
        .header(extra.0, extra.1)
        .header("x-forwarded-for", forwarded_for)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn forwarding_headers_and_request_id() {
    let a = mock("a").await;
    let config = |trusted: &str| {
        format!(
            "server:\n  trusted_proxies: [{trusted}]\npools:\n{}routes:\n  - name: all\n    proxy: {{ pool: a }}\n",
            pool("a", &[&a], "")
        )
    };

    // The client is not a trusted proxy: its X-Forwarded-* are replaced.
    let untrusted = Obleth::start(&config("10.0.0.0/8")).await;
    let r = forwarded(&untrusted, "6.6.6.6", ("host", "shop.example.com")).await;
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32, "a request id is generated");
    let body = echo(r).await;
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        h["x-request-id"],
        generated.as_str(),
        "upstream sees the same id"
    );
    assert_eq!(h["host"], "shop.example.com", "Host is passed through");

    // From a trusted proxy the chain is extended and its proto kept.
    let trusted = Obleth::start(&config("127.0.0.0/8")).await;
    let r = forwarded(
        &trusted,
        "203.0.113.9",
        ("x-request-id", "client-chosen-id"),
    )
    .await;
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id");
    let body = echo(r).await;
    assert_eq!(body["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["headers"]["x-request-id"], "client-chosen-id");
}

#[tokio::test]
async fn obleths_own_answers_carry_the_request_id() {
    let down = mock("down").await;
    down.set_healthy(false);
    let refusing = Refusing::new();
    let config = format!(
        "pools:\n{}  - name: refused\n    retries: 0\n    servers: [{{ address: '{}' }}]\n\
routes:
  - name: moved
    match: {{ path: {{ prefix: /old }} }}
    redirect: {{ status: 301, location: 'https://{{host}}/new' }}
  - name: fixed
    match: {{ path: {{ exact: /fixed }} }}
    respond: {{ status: 200, body: fixed }}
  - name: down
    match: {{ path: {{ prefix: /down }} }}
    proxy: {{ pool: down }}
  - name: refused
    match: {{ path: {{ prefix: /refused }} }}
    proxy: {{ pool: refused }}
",
        pool(
            "down",
            &[&down],
            "health_check: { path: /health, interval: 50ms, rise: 1, fall: 1 }"
        ),
        refusing.addr
    );
    let obleth = Obleth::start(&config).await;
    wait_sample(&obleth, &healthy("down", down.addr), 0.0).await;
    let c = client();
    let mut sent = 0;
    // The refused server answers 502 first, then 503 while it is ejected.
    for (path, statuses) in [
        ("/nowhere", &[404][..]),
        ("/old/page", &[301]),
        ("/fixed", &[200]),
        ("/down", &[503]),
        ("/refused", &[502, 503]),
    ] {
        let generated = {
            let r = c.get(obleth.url(path)).send().await.unwrap();
            assert!(
                statuses.contains(&r.status().as_u16()),
                "{path}: {}",
                r.status()
            );
            r.headers()
                .get("x-request-id")
                .unwrap_or_else(|| panic!("{path}: no X-Request-Id"))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert!(
            generated.len() == 32 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
            "{path}: generated id {generated:?}"
        );
        let chosen = format!("client-id-{sent}");
        let r = c
            .get(obleth.url(path))
            .header("x-request-id", &chosen)
            .send()
            .await
            .unwrap();
        assert!(
            statuses.contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
        assert_eq!(r.headers()["x-request-id"], chosen.as_str(), "{path}");
        // An unusable id (over 128 characters) is replaced, not echoed.
        let r = c
            .get(obleth.url(path))
            .header("x-request-id", "x".repeat(129))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"].len(), 32, "{path}");
        sent += 3;
        // The access log names the same ids.
        let lines = obleth.access_lines(sent).await;
        let logged = |line: &str, id: &str| line.split(' ').any(|field| field == id);
        assert!(logged(&lines[sent - 3], &generated), "{lines:?}");
        assert!(logged(&lines[sent - 2], &chosen), "{lines:?}");
    }
}
