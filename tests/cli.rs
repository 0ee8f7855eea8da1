//! The command line: `check` validates and summarises, `run` refuses an
//! invalid file, and errors name file, line and column.

mod common;

use std::process::Command;

use common::TempDir;

fn obleth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obleth"))
        .args(args)
        .output()
        .expect("obleth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("conf.yaml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_accepts_the_shipped_configs_and_prints_a_summary() {
    // The production example names certificate files; give it real ones.
    let dir = TempDir::new();
    for name in ["fullchain.pem", "privkey.pem"] {
        std::fs::write(dir.path().join(name), "placeholder").expect("write");
    }
    let production = std::fs::read_to_string("conf/production.yaml")
        .expect("production example")
        .replace("/etc/obleth/tls/", &format!("{}/", dir.path().display()));
    let production = write(&dir, &production);
    for file in [
        "conf/obleth.yaml",
        "conf/haproxy-migration.yaml",
        production.as_str(),
    ] {
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
