//! The names an operator copies from the production checklist into alerts
//! and runbooks work exactly as written there.

mod budget_common;
mod common;

use budget_common::*;
use common::*;

const KEY: &str = "obk_contract_0123456789abcdef";

#[tokio::test]
async fn requests_total_status_label_is_the_class_alerts_match() {
    let upstream = mock("u").await;
    let obleth = Obleth::start(&budget_config(&upstream, "{ name: acme }", KEY, "")).await;
    let chat = |status: Option<&'static str>| {
        let mut req = client()
            .post(obleth.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&budget_common::chat(5));
        if let Some(status) = status {
            req = req.header("x-mock-status", status);
        }
        req.send()
    };
    assert_eq!(chat(None).await.expect("answers").status(), 200);
    assert_eq!(chat(Some("500")).await.expect("answers").status(), 500);
    assert_eq!(chat(Some("503")).await.expect("answers").status(), 503);
    let last = "obleth_requests_total{admission=\"fast\",code=\"503\",status=\"5xx\"}";
    obleth
        .wait_metric(last, |n| n >= 1.0, std::time::Duration::from_secs(5))
        .await;
    // `obleth_requests_total{status="5xx"}` as the checklist's alert writes
    // it: every 5xx, whatever its code, under the class.
    let fives: f64 = samples(&obleth, "obleth_requests_total")
        .await
        .iter()
        .filter(|(labels, _)| labels.contains("status=\"5xx\""))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(fives, 2.0);
    assert_eq!(
        obleth
            .metric("obleth_requests_total{admission=\"fast\",code=\"200\",status=\"2xx\"}")
            .await,
        1.0
    );
    let text = obleth.metrics_text().await;
    assert!(
        text.contains("# TYPE obleth_telemetry_dropped counter"),
        "the checklist's obleth_telemetry_dropped keeps its name"
    );
}

#[tokio::test]
async fn capacity_takes_the_checklists_max_in_flight_body() {
    let upstream = mock("u").await;
    let obleth = Obleth::start(&budget_config(&upstream, "{ name: acme }", KEY, "")).await;
    let admin = Admin::of(&obleth);
    // The scaling guide's request, byte for byte.
    let body: serde_json::Value = serde_json::from_str(r#"{"max_in_flight": 128}"#).expect("json");
    let (status, view) = admin.call("PUT", "/capacity", Some(body)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["max_in_flight"], 128, "{view}");
    let (status, view) = admin.call("GET", "/capacity", None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["max_in_flight"], 128, "{view}");
    assert_eq!(
        view["global_max_in_flight"], 128,
        "the configuration's name stays"
    );
    let (status, err) = admin
        .call(
            "PUT",
            "/capacity",
            Some(serde_json::json!({ "max_in_flight": 0 })),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["field"], "max_in_flight", "{err}");
}
