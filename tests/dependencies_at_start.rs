//! A dependency that is down when obleth starts is waited for, not a reason
//! to exit: obleth starts, `/readyz` says what it waits for, and it becomes
//! ready once the dependency appears, without a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Forwards every connection to `port` to Postgres once started: the
/// database "appears" on a port where nothing listened before.
async fn forward_to_postgres(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarding port");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut pg) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut pg).await;
                }
            });
        }
    });
}

async fn readyz(admin: u16) -> Option<(u16, String)> {
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

#[tokio::test]
async fn postgres_down_at_start_is_waited_for_and_readiness_follows_it() {
    let db = PgDatabase::create().await;
    let [http, admin, metrics, pg] = free_ports::<4>();
    let url = db.url.replace(":5432/", &format!(":{pg}/"));
    let dir = TempDir::new();
    let config = dir.path().join("obleth.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ address: '127.0.0.1:{http}' }}]\n\
             admin: {{ address: '127.0.0.1:{admin}' }}\nmetrics: {{ address: '127.0.0.1:{metrics}' }}\n\
             store: {{ database_url: '{url}' }}\n\
             seed: {{ tenants: [{{ name: acme }}] }}\n\
             routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n"
        ),
    )
    .expect("config");
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["run", "-c"])
        .arg(&config)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_WAL_PATH", dir.path().join("wal"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("obleth starts");
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();

    // Up and answering, not ready, naming the store.
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "exited:\n{}",
            log()
        );
        match readyz(admin).await {
            Some((503, body)) if body.contains("store") => break body,
            Some((200, body)) => panic!("ready without its store: {body}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "never said it waits:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(waiting.contains("waiting for store"), "{waiting}");

    forward_to_postgres(pg).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "exited:\n{}",
            log()
        );
        if let Some((200, _)) = readyz(admin).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready once the store appeared:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tenants = client()
        .get(format!("http://127.0.0.1:{admin}/api/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin answers")
        .text()
        .await
        .unwrap_or_default();
    assert!(tenants.contains("acme"), "seeded once reachable: {tenants}");
    let _ = child.kill();
    let _ = child.wait();
}
