//! The Grafana dashboard and the alert rules query only what obleth
//! exports: every `obleth_*` name in `deploy/grafana/obleth.json` and
//! `deploy/prometheus/alerts.yml` is in the `/metrics` output of a running
//! obleth that served an LLM request, with tracing, health checks and a
//! TLS listener on.

mod common;

use std::collections::BTreeSet;

use common::*;

const KEY: &str = "obk_dashboard_0000000000000000000000";

fn names_in(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"obleth_[a-z0-9_]+").expect("regex");
    name.find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

fn deploy_file(path: &str) -> String {
    let full = format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Metric names of the samples in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let upstream = mock("a").await;
    let closed_collector = format!("http://127.0.0.1:{}", free_port());
    let certs = TempDir::new();
    let (cert, key) = self_signed(&certs, "localhost");
    let config = format!(
        "listeners:\n  - name: http\n    address: {LISTEN}\n  - name: https\n    address: 127.0.0.1:{}\n    tls: {{ cert: '{cert}', key: '{key}' }}\n\
pools:\n{}\
seed:
  tenants: [{{ name: acme }}]
  models: [{{ name: small, pool: p }}]
  keys: [{{ tenant: acme, name: k, secret: {KEY} }}]
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{}}
",
        free_port(),
        pool(
            "p",
            &[&upstream],
            "health_check: { kind: http, path: /health, interval: 1s }"
        )
    );
    let obleth = Obleth::start_with(
        &config,
        "httplog",
        &[("OBLETH_OTEL_ENDPOINT", &closed_collector)],
    )
    .await;
    let resp = post_chat(&obleth, KEY, &two_token_chat("small")).await;
    assert_eq!(resp.status(), 200);
    let metrics = obleth.metrics_text().await;
    let exported = exported(&metrics);

    let dashboard = deploy_file("grafana/obleth.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    for (file, text) in [
        ("grafana/obleth.json", dashboard.as_str()),
        (
            "prometheus/alerts.yml",
            deploy_file("prometheus/alerts.yml").as_str(),
        ),
    ] {
        let queried = names_in(text);
        assert!(!queried.is_empty(), "{file} queries no obleth metric");
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics obleth does not export: {missing:?}\n{metrics}"
        );
    }
}
