//! A configuration without `llm:` routes runs the edge alone: no store, no
//! usage log, no budgets, and a reload cannot add the first LLM route.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn plain_edge_config_opens_no_store_and_no_usage_log() {
    let web = mock("web").await;
    let obleth = proxy_to(&[&web], "").await;
    let resp = client()
        .get(obleth.url("/echo"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(
        !obleth.dir.path().join("obleth.db").exists(),
        "the SQLite store was opened"
    );
    assert!(
        !obleth.dir.path().join("wal").exists(),
        "the usage log was created"
    );
    let api = Admin::of(&obleth);
    let (status, body) = api.call("GET", "/api/v1/tenants", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("llm:"), "{body}");
}

#[tokio::test]
async fn reload_that_adds_the_first_llm_route_is_rejected() {
    let web = mock("web").await;
    let obleth = proxy_to(&[&web], "").await;
    let with_llm = format!(
        "pools:\n{}routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1 }} }}\n    llm: {{}}\n  - name: all\n    proxy: {{ pool: web }}\n",
        pool("web", &[&web], "")
    );
    obleth.reload(&with_llm);
    obleth
        .wait_metric(
            "obleth_config_reloads_total{result=\"rejected\"}",
            |n| n >= 1.0,
            Duration::from_secs(10),
        )
        .await;
    let stderr = obleth.stderr();
    assert!(stderr.contains("restart to add it"), "{stderr}");
    let resp = client()
        .get(obleth.url("/v1/models"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the running edge routes stay in place");
}
