//! `/readyz` and `/healthz` as a Kubernetes readiness probe and a preStop
//! hook read them.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn readyz_says_draining_from_sigterm_until_exit_while_healthz_stays_up() {
    let a = mock("a").await;
    let mut obleth = proxy_to(&[&a], "").await;
    let slow = slow_request_in_flight(&obleth, 1500).await;
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
    assert_drained(&mut obleth, slow).await;
}
