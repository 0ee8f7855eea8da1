//! `obleth run --upgrade` beside a running obleth takes over its listening
//! sockets, admin and metrics ports (and, with the LLM plane, its usage
//! log); the old process drains and exits. Under load, no connection is
//! refused and no request fails across the hand-over.

mod budget_common;
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use budget_common::*;
use common::*;

/// The `server` section that points both processes at one pid file and
/// upgrade socket.
fn server_section(dir: &TempDir) -> String {
    format!(
        "server:\n  threads: 2\n  grace: 10s\n  pid_file: {}/obleth.pid\n  upgrade_socket: {}/upgrade.sock\n",
        dir.path().display(),
        dir.path().display()
    )
}

/// What a load run saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Successes after the old process had exited.
    ok_after: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// Clients sending `request` in a loop until `stop`: kept-alive ones and
/// ones opening a connection per request (what a refused connection would
/// fail).
fn load(
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
    stop: Arc<AtomicBool>,
    old_gone: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let request = Arc::new(request);
    (0..12)
        .map(|i| {
            let (request, stop, old_gone, tally) = (
                request.clone(),
                stop.clone(),
                old_gone.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let client = client();
                let fresh_connections = i % 3 == 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut r = request(&client);
                    if fresh_connections {
                        r = r.header("connection", "close");
                    }
                    match r.send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if old_gone.load(Ordering::Relaxed) {
                                tally.ok_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            let why = match other {
                                Ok(r) => format!("status {}", r.status()),
                                Err(e) => format!("{e:?}"),
                            };
                            tally.errors.lock().expect("errors").push(why);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Starts `obleth run --upgrade` on the old process's configuration.
fn start_upgrade(old: &Obleth, dir: &TempDir) -> Child {
    Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config_path)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_WAL_PATH", old.dir.path().join("wal"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("new.log")).expect("log"))
        .spawn()
        .expect("obleth --upgrade starts")
}

/// Runs the load across an upgrade of `old` and checks what it promises.
async fn upgrade_under_load(
    mut old: Obleth,
    dir: &TempDir,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> Child {
    let old_pid = std::fs::read_to_string(dir.path().join("obleth.pid")).expect("pid file");
    assert_eq!(old_pid.trim(), old.pid().to_string());
    let (stop, old_gone, tally) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Tally::default()),
    );
    let clients = load(request, stop.clone(), old_gone.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = start_upgrade(&old, dir);
    let exited = old.wait_exit(Duration::from_secs(40)).await;
    let log = || std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old process drains and exits 0 ({exited:?}):\n{}\nnew:\n{}",
        old.stderr(),
        log()
    );
    old_gone.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    assert!(
        new.try_wait().expect("wait").is_none(),
        "the new process serves:\n{}",
        log()
    );
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{ok} ok; failures: {:?}",
        tally
            .errors
            .lock()
            .expect("errors")
            .iter()
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        tally.ok_after.load(Ordering::Relaxed) > 0,
        "served after the old process exited"
    );
    assert!(ok > 100, "only {ok} requests under load");

    // The new process has the admin and metrics ports and the pid file.
    let ready = client()
        .get(old.admin_url("/readyz"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(ready.status(), 200);
    let metrics = client()
        .get(format!("http://{}/metrics", old.metrics))
        .send()
        .await
        .expect("metrics answer");
    assert_eq!(metrics.status(), 200);
    let pid = std::fs::read_to_string(dir.path().join("obleth.pid")).expect("pid file");
    assert_eq!(pid.trim(), new.id().to_string());
    new
}

#[tokio::test]
async fn an_upgrade_under_load_refuses_no_connection_and_fails_no_request() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let old = Obleth::start(&format!(
        "{}{}",
        server_section(&dir),
        proxy_config(&[&up], "")
    ))
    .await;
    let url = old.url("/echo");
    let mut new = upgrade_under_load(old, &dir, move |client| client.get(&url)).await;
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test]
async fn an_upgrade_with_the_llm_plane_hands_over_the_usage_log_and_fails_no_request() {
    let up = mock("a").await;
    let dir = TempDir::new();
    let key = "obk_upgrade_0123456789abcdef";
    let config = budget_config(&up, "{ name: acme }", key, &server_section(&dir));
    let old = Obleth::start(&config).await;
    let url = old.url("/v1/chat/completions");
    let mut new = upgrade_under_load(old, &dir, move |client| {
        client
            .post(&url)
            .bearer_auth(key)
            .json(&two_token_chat("m"))
    })
    .await;
    let _ = new.kill();
    let _ = new.wait();
}
