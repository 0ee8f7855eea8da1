//! obleth's logs as an aggregator and logrotate meet them.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn json_log_format_writes_one_object_per_line_without_colour() {
    let a = mock("a").await;
    let body = format!("pools:\n{}{}", pool("p", &[&a], ""), catch_all("p"));
    let obleth = Obleth::start_with(&body, "httplog", &[("OBLETH_LOG_FORMAT", "json")]).await;
    obleth
        .wait_stderr("\"ready\"", Duration::from_secs(5))
        .await;
    let stderr = obleth.stderr();
    assert!(!stderr.contains('\u{1b}'), "ANSI codes in a file: {stderr}");
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{stderr}");
}

#[tokio::test]
async fn text_log_format_has_no_colour_when_not_a_terminal() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "").await;
    obleth.wait_stderr("ready", Duration::from_secs(5)).await;
    let stderr = obleth.stderr();
    assert!(!stderr.contains('\u{1b}'), "ANSI codes in a file: {stderr}");
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_logrotate_moved_it() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "").await;
    let get = |path: &'static str| client().get(obleth.url(path)).send();
    assert_eq!(get("/echo/before").await.expect("answers").status(), 200);
    obleth.access_lines(1).await;
    let rotated = obleth.dir.path().join("access.log.1");
    std::fs::rename(&obleth.access_log, &rotated).expect("rotate");
    obleth.signal("USR1");
    obleth
        .wait_stderr("access log reopened", Duration::from_secs(5))
        .await;
    assert_eq!(get("/echo/after").await.expect("answers").status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = std::fs::read_to_string(&obleth.access_log).unwrap_or_default();
        if fresh.contains("/echo/after") {
            assert!(!fresh.contains("/echo/before"), "{fresh}");
            break;
        }
        assert!(Instant::now() < deadline, "no line in the reopened file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("/echo/before") && !old.contains("/echo/after"),
        "{old}"
    );
}
