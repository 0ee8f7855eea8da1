//! The command line: `check` validates and summarises, `run` refuses an
//! invalid file, and errors name file, line and column.

mod common;

use std::process::Command;

use common::*;

fn write(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("conf.yaml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_accepts_the_shipped_configs_and_prints_a_summary() {
    // The examples name certificate files; give them files to find.
    let dir = TempDir::new();
    let with_certificates = |example: &str| {
        let text = std::fs::read_to_string(example).expect("example");
        for path in text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("/etc/obleth/tls/"))
        {
            let name = path.trim_end_matches([',', '}']);
            std::fs::write(dir.path().join(name), "placeholder").expect("write");
        }
        let text = text.replace("/etc/obleth/tls/", &format!("{}/", dir.path().display()));
        let path = dir.path().join(example.replace('/', "_"));
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let production = with_certificates("conf/production.yaml");
    let migration = with_certificates("conf/haproxy-migration.yaml");
    for file in ["conf/obleth.yaml", migration.as_str(), production.as_str()] {
        let (ok, out, err) = obleth(&["check", "-c", file]);
        assert!(ok, "{file}: {err}");
        assert!(out.contains("configuration ok"), "{out}");
        assert!(out.contains("route "), "{out}");
    }
}

#[test]
fn malformed_files_are_reported_with_line_and_column() {
    let dir = TempDir::new();
    let cases = [
        ("routes:\n  - name: a\n    respond: { status: 200 }\n    colour: red\n", ":4:5: ", "unknown field `colour`"),
        ("server:\n  threads: [1]\n", ":2:12: ", "invalid type"),
        ("routes:\n  - name: a\n    proxy: { pool: ghost }\n", ":3:14: ", "routes[0].proxy.pool: pool \"ghost\" is not defined"),
        ("pools:\n  - name: p\n    servers: [{ address: '127.0.0.1:1' }]\n    timeouts: { read: forever }\n", ":4:17: ", "pools[0].timeouts.read"),
        ("listeners:\n  - address: 'nowhere'\n", ":2:5: ", "listeners[0].address"),
        ("routes: [\n", ":", "did not find expected"),
        ("pools:\n  - name: p\n    servers: [{ address: '127.0.0.1:1' }]\n    health_check: { interval: 0s }\n", ":4:21: ", "pools[0].health_check.interval: must be longer than zero"),
        ("routes:\n  - name: a\n    respond: { status: 101 }\n", ":3:16: ", "routes[0].respond.status: 101 is not a final response status"),
        ("pools:\n  - name: p\n    servers: [{ address: '127.0.0.1:1' }]\nseed:\n  models:\n    - { name: a, pool: p }\n    - { name: b, pool: p, aliases: [a] }\n", ":7:37: ", "seed.models[1].aliases[0]: \"a\" already names the model \"a\""),
    ];
    for (text, position, message) in cases {
        let path = write(&dir, text);
        let (ok, _, err) = obleth(&["check", "-c", &path]);
        assert!(!ok, "{text} was accepted");
        assert!(
            err.contains(&format!("{path}{position}")),
            "{text}\n=> {err}"
        );
        assert!(err.contains(message), "{text}\n=> {err}");
        let (ok, _, run_err) = obleth(&["run", "-c", &path]);
        assert!(
            !ok && run_err == err,
            "run refuses the same file with the same error"
        );
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (ok, _, err) = obleth(&["check", "-c", "/nonexistent/obleth.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/obleth.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn help_is_available_everywhere() {
    for args in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        let (ok, out, _) = obleth(args);
        assert!(ok && out.contains("Usage"), "{args:?}: {out}");
    }
}

fn obleth_env(args: &[&str], admin: &Obleth) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(args)
        .env("OBLETH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OBLETH_ADMIN_URL", format!("http://{}", admin.admin))
        .output()
        .expect("obleth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tenant_and_key_commands_call_the_admin_api() {
    // The admin API has tenants and keys only where an LLM route runs.
    let obleth = Obleth::start("routes:\n  - name: llm\n    match: { path: { prefix: /v1 } }\n    llm: {}\n  - name: r\n    respond: { status: 200 }\n").await;
    let (ok, out, err) = obleth_env(
        &["tenant", "create", "acme", "--tokens-per-minute", "5000"],
        &obleth,
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"tokens_per_minute\": 5000"), "{out}");
    let (ok, out, err) = obleth_env(&["tenant", "create", "acme"], &obleth);
    assert!(!ok && err.contains("409"), "duplicate: {out} {err}");

    let (ok, out, err) = obleth_env(
        &["key", "create", "--tenant", "acme", "--name", "ci"],
        &obleth,
    );
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.split("store it now): ").nth(1))
        .expect("secret line")
        .trim()
        .to_string();
    assert!(secret.starts_with("obk_"), "{out}");

    let (ok, out, err) = obleth_env(&["key", "list", "--tenant", "acme"], &obleth);
    assert!(ok, "{err}");
    assert!(
        out.contains("ci") && out.contains("active") && out.contains(&secret[..8]),
        "{out}"
    );
    assert!(
        !out.contains(&secret),
        "the list never shows a secret: {out}"
    );
    let (ok, out, _) = obleth_env(&["tenant", "list"], &obleth);
    assert!(ok && out.contains("acme"), "{out}");

    let out = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["key", "list", "--tenant", "acme"])
        .env_remove("OBLETH_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OBLETH_ADMIN_TOKEN"));
}

/// What the migrations in `migrations/BACKEND` promise: their versions and
/// the tables they create.
fn promised(backend: &str) -> (Vec<i64>, Vec<String>) {
    let mut versions = Vec::new();
    let mut tables = Vec::new();
    for entry in std::fs::read_dir(format!("migrations/{backend}")).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        versions.push(name.split('_').next().unwrap().parse().expect("numbered"));
        let sql = std::fs::read_to_string(&path).expect("read");
        for stmt in sql.split("CREATE TABLE ").skip(1) {
            let table = stmt.split_whitespace().next().expect("a name");
            tables.push(table.trim_matches('(').to_string());
        }
    }
    versions.sort();
    tables.sort();
    (versions, tables)
}

#[tokio::test]
async fn migrate_prepares_a_new_store_on_sqlite_and_postgres() {
    use sqlx::{Connection, Row};
    let dir = TempDir::new();
    let db = dir.path().join("fresh.db");
    let pg = PgDatabase::create().await;
    for (backend, url) in [
        ("sqlite", format!("sqlite://{}", db.display())),
        ("postgres", pg.url.clone()),
    ] {
        let path = write(&dir, &format!("store:\n  database_url: '{url}'\n"));
        let (ok, out, err) = obleth(&["migrate", "-c", &path]);
        assert!(ok, "{backend}: {err}");
        assert!(out.contains("migrations applied"), "{out}");
        let (ok, _, err) = obleth(&["migrate", "-c", &path]);
        assert!(ok, "{backend}: migrating twice is harmless: {err}");

        let (versions, tables) = promised(backend);
        let (applied, mut present): (Vec<i64>, Vec<String>) = if backend == "sqlite" {
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            let applied =
                sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(&mut c)
                    .await
                    .expect("migration table");
            let present = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut c)
                .await
                .expect("tables");
            (
                applied.iter().map(|r| r.get(0)).collect(),
                present.iter().map(|r| r.get(0)).collect(),
            )
        } else {
            let mut c = pg.connect().await;
            let applied =
                sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(&mut c)
                    .await
                    .expect("migration table");
            let present = sqlx::query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&mut c)
            .await
            .expect("tables");
            (
                applied.iter().map(|r| r.get(0)).collect(),
                present.iter().map(|r| r.get(0)).collect(),
            )
        };
        assert_eq!(applied, versions, "{backend}: every migration applied once");
        present.sort();
        for table in &tables {
            assert!(
                present.contains(table),
                "{backend}: no table {table} in {present:?}"
            );
        }
    }
}

#[test]
fn run_refuses_a_short_or_missing_admin_token() {
    let dir = TempDir::new();
    let db = dir.path().join("t.db");
    let path = write(
        &dir,
        &format!(
            "store:\n  database_url: 'sqlite://{}'\nlisteners: [{{ address: '127.0.0.1:{}' }}]\n",
            db.display(),
            free_port()
        ),
    );
    for token in [None, Some("short")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_obleth"));
        cmd.args(["run", "-c", &path])
            .env_remove("OBLETH_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("OBLETH_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("OBLETH_ADMIN_TOKEN must be set"),
            "{token:?}"
        );
    }
}

#[tokio::test]
async fn the_official_openai_python_client_works_through_obleth() {
    let upstream = mock("vllm").await;
    let config = format!(
        "pools:\n{}seed:\n  tenants: [{{ name: acme }}]\n  models: [{{ name: small, pool: p }}]\n  keys: [{{ tenant: acme, name: k, secret: obk_python_client_0000000000000 }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[&upstream], "")
    );
    let obleth = Obleth::start(&config).await;
    let url = obleth.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                "tests/openai_client.py",
                &url,
                "obk_python_client_0000000000000",
                "small",
            ])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn output_to_a_reader_that_went_away_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(["check", "-c", "conf/obleth.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("obleth runs");
    // As `obleth check | head -0` would: the reader is gone before the output.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("obleth exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
