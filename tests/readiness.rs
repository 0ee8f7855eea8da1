//! `/readyz` and `/healthz` as a Kubernetes readiness probe and a preStop
//! hook read them.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn readyz_says_draining_from_sigterm_until_exit_while_healthz_stays_up() {
    let a = mock("a").await;
    let mut obleth = proxy_to(&[&a], "").await;
    let url = obleth.url("/echo");
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .header("x-mock-latency-ms", "1500")
            .send()
            .await
    });
    obleth
        .wait_metric(
            "obleth_http_in_flight",
            |n| n >= 1.0,
            Duration::from_secs(10),
        )
        .await;
    obleth.signal("TERM");
    let admin = |path: &'static str| {
        let url = format!("http://{}{path}", obleth.admin);
        async move {
            let r = client()
                .get(url)
                .send()
                .await
                .expect("admin answers during the drain");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = admin("/readyz").await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(admin("/healthz").await.0, 200, "live until exit");
    assert!(!slow.is_finished(), "the request in flight holds the drain");
    let (status, body) = admin("/readyz").await;
    assert_eq!((status, body.contains("draining")), (503, true), "{body}");
    let r = slow
        .await
        .expect("joined")
        .expect("the request in flight completes");
    assert_eq!(r.status(), 200);
    let exit = obleth
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("exits after the drain");
    assert!(exit.success(), "{exit}");
}
