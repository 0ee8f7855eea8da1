//! Process lifecycle: reload on SIGHUP (atomic, under load, never cutting
//! streams, rejecting invalid files), drain on SIGTERM, the admin and metrics
//! endpoints and the access log formats.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A `server` section whose drain gives up after one second.
const SHORT_GRACE: &str = "server:\n  threads: 2\n  grace: 1s\n";

fn respond_config(body: &str) -> String {
    format!("routes:\n  - name: hello\n    respond: {{ status: 200, body: {body} }}\n")
}

async fn wait_for_body(obleth: &Obleth, expected: &str) {
    let url = obleth.url("/");
    wait_for(
        "the body of /",
        expected.to_string(),
        Duration::from_secs(5),
        || get_text(&url),
    )
    .await;
}

#[tokio::test]
async fn reload_swaps_routes_under_load_without_failed_requests() {
    let (a, b) = (mock("a").await, mock("b").await);
    let config = |server: &MockUpstream| proxy_config(&[server], "");
    let obleth = Arc::new(Obleth::start(&config(&a)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (obleth, stop, failures, done) =
            (obleth.clone(), stop.clone(), failures.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(obleth.url("/bench")).send().await {
                    Ok(r) if r.status() == 200 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // A long stream that starts before the reloads and must survive them.
    let stream = {
        let url = obleth.url("/v1/chat/completions");
        tokio::spawn(async move {
            client()
                .post(url)
                .header("x-mock-tps", "20")
                .body(r#"{"model":"m","messages":[],"stream":true,"max_tokens":40}"#)
                .send()
                .await?
                .text()
                .await
        })
    };
    // The stream and the load are under way before the first reload.
    obleth
        .wait_at_least("obleth_http_in_flight", 1.0, Duration::from_secs(10))
        .await;
    let reloaded = "obleth_config_reloads_total{result=\"ok\"}";
    for i in 0..6 {
        obleth.reload(&config(if i % 2 == 0 { &b } else { &a }));
        let n = f64::from(i + 1);
        obleth
            .wait_at_least(reloaded, n, Duration::from_secs(10))
            .await;
        // Requests keep flowing on the new generation before the next swap.
        let before = done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::Relaxed) < before + 10 {
            assert!(
                Instant::now() < deadline,
                "requests stalled after reload {i}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    obleth.reload(&config(&b));
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_by(&client().get(obleth.url("/bench")).send().await.unwrap()) != "b" {
        assert!(Instant::now() < deadline, "reload never took effect");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let text = stream.await.unwrap().expect("the stream finished");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut by a reload: {text}"
    );
    assert_eq!(text.matches("\"content\":\"tok").count(), 40);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "{} requests done",
        done.load(Ordering::Relaxed)
    );
    assert!(done.load(Ordering::Relaxed) > 50);
    assert_eq!(
        obleth
            .metric("obleth_config_reloads_total{result=\"ok\"}")
            .await,
        7.0
    );
}

#[tokio::test]
async fn an_invalid_reload_is_rejected_and_the_old_config_kept() {
    let obleth = Obleth::start(&respond_config("one")).await;
    wait_for_body(&obleth, "one").await;
    obleth
        .reload("routes:\n  - name: hello\n    respond: { status: 200, body: two }\n    typo: 1\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while obleth
        .metric("obleth_config_reloads_total{result=\"rejected\"}")
        .await
        != 1.0
    {
        assert!(Instant::now() < deadline, "reload not rejected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_body(&obleth, "one").await;
    let log = obleth.stderr();
    assert!(
        log.contains("obleth.yaml:") && log.contains("unknown field `typo`"),
        "{log}"
    );
    obleth.reload(&respond_config("three"));
    wait_for_body(&obleth, "three").await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = mock("a").await;
    let mut obleth = proxy_to(&[&a], "").await;
    let slow = slow_request_in_flight(&obleth, 1000).await;
    let started = Instant::now();
    obleth.signal("TERM");
    // Within the drain (the request takes a second): readiness goes and
    // new connections are refused while the request in flight goes on.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let readyz = client().get(obleth.admin_url("/readyz")).send().await;
        let unready = readyz.is_err() || readyz.is_ok_and(|r| r.status() == 503);
        let refused = tokio::net::TcpStream::connect(obleth.http).await.is_err();
        if unready && refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready ({}) or accepting ({}) while draining",
            !unready,
            !refused
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !slow.is_finished(),
        "the drain waits for the request in flight"
    );
    assert_drained(&mut obleth, slow).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exits once drained, not after the whole 5s grace"
    );
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let obleth = Obleth::start(&respond_config("hi")).await;
    let c = client();
    for endpoint in ["/healthz", "/readyz"] {
        let r = c.get(obleth.admin_url(endpoint)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{endpoint}");
    }
    for _ in 0..3 {
        c.get(obleth.url("/")).send().await.unwrap();
    }
    let text = obleth.metrics_text().await;
    assert!(
        text.contains("obleth_http_requests_total{route=\"hello\",status_class=\"2xx\"} 3"),
        "{text}"
    );
    assert!(text.contains("obleth_http_request_duration_seconds_count{route=\"hello\"} 3"));
    assert!(text.contains("obleth_http_in_flight 0"));
}

/// GETs `path` and returns the access log line of that request, the
/// `nth` (from 1) the instance wrote.
async fn log_line_of(obleth: &Obleth, path: &str, nth: usize) -> String {
    client().get(obleth.url(path)).send().await.unwrap();
    obleth.access_lines(nth).await.remove(nth - 1)
}

#[tokio::test]
async fn access_log_writes_httplog_and_json_lines_without_query_credentials() {
    let a = mock("a").await;
    let config = format!(
        "pools:\n{}routes:\n  - name: api\n    proxy: {{ pool: p }}\n",
        pool("p", &[&a], "")
    );

    let obleth = Obleth::start(&config).await;
    client()
        .get(obleth.url("/echo?q=1"))
        .header("x-request-id", "rid-1")
        .send()
        .await
        .unwrap();
    let line = obleth.access_lines(1).await.remove(0);
    let expected_server = format!(" api p/{} ", a.addr);
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert!(line.contains(&expected_server), "{line}");
    assert!(
        line.contains(" 200 ") && line.contains(" -- 0 \"GET /echo?q=1 HTTP/1.1\" rid-1"),
        "{line}"
    );

    // Credentials in the query never reach the log, in either format.
    let line = log_line_of(&obleth, "/echo?api_key=sk-live-1&q=2&token=t0p", 2).await;
    assert!(
        line.contains("\"GET /echo?api_key=REDACTED&q=2&token=REDACTED HTTP/1.1\""),
        "{line}"
    );

    let obleth = Obleth::start_with(&config, "json", &[]).await;
    let line = log_line_of(&obleth, "/echo?key=abc", 1).await;
    assert!(!line.contains("abc"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["uri"], "/echo?key=REDACTED");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "api");
    assert_eq!(v["pool"], "p");
    assert_eq!(v["server"], a.addr.to_string());
    assert_eq!(v["termination"], "--");
    assert!(v["total_ms"].as_i64().is_some());
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let obleth = Obleth::start_with(
        &respond_config("env"),
        "httplog",
        &[("OBLETH_LISTEN", &addr)],
    )
    .await;
    assert_eq!(get_text(&format!("http://{addr}/")).await, "env");
    assert!(
        tokio::net::TcpStream::connect(obleth.http).await.is_err(),
        "the file's address is not used"
    );
}

#[tokio::test]
async fn sigterm_waits_no_longer_than_the_grace_and_sigint_does_not_wait() {
    let a = mock("a").await;
    let config = SHORT_GRACE.to_string() + &proxy_config(&[&a], "");
    for signal in ["TERM", "INT"] {
        let mut obleth = Obleth::start(&config).await;
        // Far longer than the grace: the drain must give up on it.
        let slow = slow_request_in_flight(&obleth, 20_000).await;
        let started = Instant::now();
        obleth.signal(signal);
        let status = obleth
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("SIG{signal}: still running after 10 s"));
        let took = started.elapsed();
        let limit = if signal == "TERM" { 4 } else { 2 };
        assert!(
            took < Duration::from_secs(limit),
            "SIG{signal}: exited after {took:?}"
        );
        if signal == "TERM" {
            assert!(status.success(), "{status}");
            assert!(
                took >= Duration::from_millis(900),
                "the drain gave the request its grace: {took:?}"
            );
        }
        let cut = slow.await.expect("client task");
        assert!(
            cut.is_err(),
            "SIG{signal}: the request in flight was cut off, not answered"
        );
    }
}

#[tokio::test]
async fn a_listener_port_in_use_stops_start_up_naming_the_listener() {
    // Another process's server on the port the listener wants.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("bound").port();
    let [admin, metrics] = free_ports();
    let dir = TempDir::new();
    let config = dir.path().join("obleth.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:{port}\n\
             admin:\n  address: 127.0.0.1:{admin}\nmetrics:\n  address: 127.0.0.1:{metrics}\n\
             routes:\n  - name: r\n    match: {{ path: {{ prefix: / }} }}\n    respond: {{ status: 200 }}\n"
        ),
    )
    .expect("config");
    let (failed, stderr) = run_to_exit(&config, dir.path(), Duration::from_secs(10)).await;
    assert!(failed, "a non-zero exit within 10 s:\n{stderr}");
    assert!(
        stderr.contains(&format!("listener public: cannot bind 127.0.0.1:{port}"))
            && stderr
                .to_ascii_lowercase()
                .contains("address already in use"),
        "{stderr}"
    );
    drop(taken);
}
