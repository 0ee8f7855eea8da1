//! `OBLETH_*` environment variables that override keys of the file: one
//! table, so the variables an operator may set, the keys they replace and how
//! their text is read are written down once.

use serde::de::{value::StrDeserializer, DeserializeOwned, IntoDeserializer};

use super::raw::*;
use super::validate::Validator;
use super::Problem;

/// One variable, the file key it overrides, and how its text lands there.
pub struct EnvOverride {
    pub name: &'static str,
    pub key: &'static str,
    apply: fn(&mut RawConfig, &str) -> Result<(), String>,
}

/// Environment variables that override keys of the file, applied in this
/// order before validation (so an override is checked like the file's value).
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        name: "OBLETH_LISTEN",
        key: "listeners[0].address",
        apply: |raw, text| {
            match raw.listeners.first_mut() {
                Some(l) => l.address = text.into(),
                None => raw.listeners.push(RawListener {
                    address: text.into(),
                    ..RawListener::default()
                }),
            }
            Ok(())
        },
    },
    EnvOverride {
        name: "OBLETH_ADMIN_LISTEN",
        key: "admin.address",
        apply: |raw, text| set(&mut raw.admin.address, text.into()),
    },
    EnvOverride {
        name: "OBLETH_METRICS_LISTEN",
        key: "metrics.address",
        apply: |raw, text| set(&mut raw.metrics.address, text.into()),
    },
    EnvOverride {
        name: "OBLETH_THREADS",
        key: "server.threads",
        apply: |raw, text| set(&mut raw.server.threads, number(text)?),
    },
    EnvOverride {
        name: "OBLETH_GRACE",
        key: "server.grace",
        apply: |raw, text| set(&mut raw.server.grace, RawDuration::parse(text)),
    },
    EnvOverride {
        name: "OBLETH_ACCESS_LOG",
        key: "access_log.format",
        apply: |raw, text| set(&mut raw.access_log.format, variant(text)?),
    },
    EnvOverride {
        name: "OBLETH_LOG_FORMAT",
        key: "log.format",
        apply: |raw, text| set(&mut raw.log.format, variant(text)?),
    },
    EnvOverride {
        name: "OBLETH_ACCESS_LOG_PATH",
        key: "access_log.path",
        apply: |raw, text| set(&mut raw.access_log.path, text.into()),
    },
    EnvOverride {
        name: "OBLETH_DATABASE_URL",
        key: "store.database_url",
        apply: |raw, text| set(&mut raw.store.database_url, text.into()),
    },
    EnvOverride {
        name: "OBLETH_REDIS_MODE",
        key: "redis.mode",
        apply: |raw, text| {
            // The environment picks the deployment: addresses the file
            // gives for another mode are dropped, not reported.
            let mode: RedisMode = variant(text)?;
            let r = &mut raw.redis;
            if mode != RedisMode::Standalone {
                r.url = None;
            }
            if mode != RedisMode::Sentinel {
                r.sentinels = None;
                r.master_name = None;
            }
            if mode != RedisMode::Cluster {
                r.nodes = None;
            }
            set(&mut r.mode, mode)
        },
    },
    EnvOverride {
        name: "OBLETH_REDIS_URL",
        key: "redis.url",
        apply: |raw, text| set(&mut raw.redis.url, text.into()),
    },
    EnvOverride {
        name: "OBLETH_REDIS_SENTINELS",
        key: "redis.sentinels",
        apply: |raw, text| set(&mut raw.redis.sentinels, list(text)),
    },
    EnvOverride {
        name: "OBLETH_REDIS_MASTER_NAME",
        key: "redis.master_name",
        apply: |raw, text| set(&mut raw.redis.master_name, text.into()),
    },
    EnvOverride {
        name: "OBLETH_REDIS_NODES",
        key: "redis.nodes",
        apply: |raw, text| set(&mut raw.redis.nodes, list(text)),
    },
    EnvOverride {
        name: "OBLETH_FAIL_OPEN",
        key: "budgets.fail_open",
        apply: |raw, text| {
            let flag = match text {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(format!("{text:?} is not true or false")),
            };
            set(&mut raw.budgets.fail_open, flag)
        },
    },
    EnvOverride {
        name: "OBLETH_GLOBAL_MAX_IN_FLIGHT",
        key: "admission.global_max_in_flight",
        apply: |raw, text| {
            let n: u64 = number(text)?;
            set(
                &mut raw.admission.global_max_in_flight,
                n.min(u64::from(u32::MAX)) as u32,
            )
        },
    },
    EnvOverride {
        name: "OBLETH_BROWNOUT_WAIT_MS",
        key: "admission.brownout_wait",
        apply: |raw, text| {
            let ms = number(text)?;
            let wait = RawDuration(Ok(std::time::Duration::from_millis(ms)));
            set(&mut raw.admission.brownout_wait, wait)
        },
    },
    EnvOverride {
        name: "OBLETH_WAL_PATH",
        key: "telemetry.wal_path",
        apply: |raw, text| set(&mut raw.telemetry.wal_path, text.into()),
    },
    EnvOverride {
        name: "OBLETH_REPLICA",
        key: "telemetry.replica",
        apply: |raw, text| set(&mut raw.telemetry.replica, text.into()),
    },
    EnvOverride {
        name: "OBLETH_CLICKHOUSE_URL",
        key: "telemetry.clickhouse.url",
        apply: |raw, text| {
            let clickhouse = raw
                .telemetry
                .clickhouse
                .get_or_insert_with(Default::default);
            // A comma-separated list names the replicas of a cluster.
            let urls: Vec<String> = text.split(',').map(|u| u.trim().to_string()).collect();
            set(&mut clickhouse.url, OneOrMany::Many(urls))
        },
    },
    EnvOverride {
        name: "OBLETH_OTEL_ENDPOINT",
        key: "tracing.endpoint",
        apply: |raw, text| set(&mut raw.tracing.endpoint, text.into()),
    },
];

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), String> {
    *slot = Some(value);
    Ok(())
}

/// A comma-separated list, blanks dropped.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// One of a fixed set of names, read the way serde reads the file's value.
fn variant<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let de: StrDeserializer<serde::de::value::Error> = text.into_deserializer();
    T::deserialize(de).map_err(|e| format!("{text:?}: {e}"))
}

pub(super) fn apply_env(
    raw: &mut RawConfig,
    env: &impl Fn(&str) -> Option<String>,
    v: &mut Validator,
) {
    for o in ENV_OVERRIDES {
        let Some(text) = env(o.name) else { continue };
        if let Err(message) = (o.apply)(raw, &text) {
            v.problems.push(Problem {
                file: "environment".into(),
                position: None,
                key: o.name.into(),
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_override_names_a_distinct_variable_and_key() {
        let mut names: Vec<_> = ENV_OVERRIDES.iter().map(|o| o.name).collect();
        let mut keys: Vec<_> = ENV_OVERRIDES.iter().map(|o| o.key).collect();
        names.sort_unstable();
        names.dedup();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(names.len(), ENV_OVERRIDES.len());
        assert_eq!(keys.len(), ENV_OVERRIDES.len());
    }

    #[test]
    fn an_unknown_name_for_a_fixed_set_is_refused() {
        let mut raw = RawConfig::default();
        let o = ENV_OVERRIDES
            .iter()
            .find(|o| o.name == "OBLETH_ACCESS_LOG")
            .expect("listed");
        assert!((o.apply)(&mut raw, "json").is_ok());
        let err = (o.apply)(&mut raw, "xml").expect_err("xml is no access log format");
        assert!(err.contains("httplog"), "{err}");
    }
}
