//! Two processes given one `telemetry.wal_path` (a shared volume under
//! `docker compose --scale`) would write segments and checkpoints into one
//! directory; the second is refused at start-up.

mod budget_common;
mod common;

use std::process::Command;

use budget_common::*;
use common::*;

#[tokio::test]
async fn a_second_obleth_on_the_same_usage_log_refuses_to_start_naming_it() {
    let upstream = mock("u").await;
    let first = Obleth::start(&budget_config(
        &upstream,
        "{ name: acme }",
        "obk_one_writer_0123456789abcdef",
        "",
    ))
    .await;
    let wal = first.dir.path().join("wal");
    let [http, admin, metrics] = free_ports::<3>();
    let second = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["run", "-c"])
        .arg(&first.config_path)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_WAL_PATH", &wal)
        .env("OBLETH_LISTEN", format!("127.0.0.1:{http}"))
        .env("OBLETH_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OBLETH_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second writer started:\n{stderr}"
    );
    assert!(stderr.contains(&wal.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&first.pid().to_string()),
        "names the holder: {stderr}"
    );
    // The first goes on serving.
    let resp = post_chat(&first, "obk_one_writer_0123456789abcdef", &chat(3)).await;
    assert_eq!(resp.status(), 200);
}
