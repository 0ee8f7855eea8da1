//! `OBLETH_*` environment variables that override keys of the file.

use super::raw::*;
use super::validate::Validator;
use super::Problem;

/// Environment variables that override keys of the file.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("OBLETH_LISTEN", "listeners[0].address"),
    ("OBLETH_ADMIN_LISTEN", "admin.address"),
    ("OBLETH_METRICS_LISTEN", "metrics.address"),
    ("OBLETH_THREADS", "server.threads"),
    ("OBLETH_GRACE", "server.grace"),
    ("OBLETH_ACCESS_LOG", "access_log.format"),
    ("OBLETH_ACCESS_LOG_PATH", "access_log.path"),
    ("OBLETH_DATABASE_URL", "store.database_url"),
    ("OBLETH_REDIS_URL", "redis.url"),
    ("OBLETH_FAIL_OPEN", "budgets.fail_open"),
    (
        "OBLETH_GLOBAL_MAX_IN_FLIGHT",
        "admission.global_max_in_flight",
    ),
    ("OBLETH_BROWNOUT_WAIT_MS", "admission.brownout_wait"),
    ("OBLETH_WAL_PATH", "telemetry.wal_path"),
    ("OBLETH_CLICKHOUSE_URL", "telemetry.clickhouse.url"),
];

pub(super) fn apply_env(
    raw: &mut RawConfig,
    env: &impl Fn(&str) -> Option<String>,
    v: &mut Validator,
) {
    if let Some(addr) = env("OBLETH_LISTEN") {
        match raw.listeners.first_mut() {
            Some(l) => l.address = addr,
            None => raw.listeners.push(RawListener {
                address: addr,
                ..RawListener::default()
            }),
        }
    }
    if let Some(addr) = env("OBLETH_ADMIN_LISTEN") {
        raw.admin.address = Some(addr);
    }
    if let Some(addr) = env("OBLETH_METRICS_LISTEN") {
        raw.metrics.address = Some(addr);
    }
    let mut number = |name: &str| -> Option<u64> {
        let text = env(name)?;
        let parsed = text.parse().ok();
        if parsed.is_none() {
            v.problems.push(Problem {
                file: "environment".into(),
                position: None,
                key: name.into(),
                message: format!("{text:?} is not a number"),
            });
        }
        parsed
    };
    if let Some(n) = number("OBLETH_THREADS") {
        raw.server.threads = Some(n as usize);
    }
    if let Some(n) = number("OBLETH_GLOBAL_MAX_IN_FLIGHT") {
        raw.admission.global_max_in_flight = Some(n.min(u64::from(u32::MAX)) as u32);
    }
    if let Some(ms) = number("OBLETH_BROWNOUT_WAIT_MS") {
        raw.admission.brownout_wait = Some(format!("{ms}ms"));
    }
    if let Some(grace) = env("OBLETH_GRACE") {
        raw.server.grace = Some(grace);
    }
    if let Some(format) = env("OBLETH_ACCESS_LOG") {
        raw.access_log.format = Some(format);
    }
    if let Some(path) = env("OBLETH_ACCESS_LOG_PATH") {
        raw.access_log.path = Some(path);
    }
    if let Some(url) = env("OBLETH_DATABASE_URL") {
        raw.store.database_url = Some(url);
    }
    if let Some(url) = env("OBLETH_REDIS_URL") {
        raw.redis.url = Some(url);
    }
    if let Some(path) = env("OBLETH_WAL_PATH") {
        raw.telemetry.wal_path = Some(path);
    }
    if let Some(url) = env("OBLETH_CLICKHOUSE_URL") {
        raw.telemetry
            .clickhouse
            .get_or_insert_with(Default::default)
            .url = Some(url);
    }
    if let Some(flag) = env("OBLETH_FAIL_OPEN") {
        match flag.as_str() {
            "true" | "1" => raw.budgets.fail_open = Some(true),
            "false" | "0" => raw.budgets.fail_open = Some(false),
            _ => v.problems.push(Problem {
                file: "environment".into(),
                position: None,
                key: "OBLETH_FAIL_OPEN".into(),
                message: format!("{flag:?} is not true or false"),
            }),
        }
    }
}
