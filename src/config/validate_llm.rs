//! Validation of the LLM plane: admission, telemetry and the seed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use obleth_filters::admission::QueueOrder;

use super::raw::*;
use super::*;

impl Validator {
    pub(super) fn admission(&mut self, raw: &RawAdmission) -> AdmissionSettings {
        let global_max_in_flight = raw.global_max_in_flight.unwrap_or(64);
        if global_max_in_flight == 0 {
            self.problem("admission.global_max_in_flight", "must be at least 1");
        }
        let queue_per_pool = raw.queue_per_pool.unwrap_or(1024);
        let timeout = self.positive_duration(
            "admission.timeout",
            raw.timeout.as_ref(),
            Duration::from_secs(30),
        );
        let brownout_wait = self.duration(
            "admission.brownout_wait",
            raw.brownout_wait.as_ref(),
            Duration::from_millis(750),
        );
        let brownout_max_tokens = raw.brownout_max_tokens.unwrap_or(256);
        if brownout_max_tokens == 0 {
            self.problem("admission.brownout_max_tokens", "must be at least 1");
        }
        let order = raw.order.unwrap_or(QueueOrder::Fair);
        let max_buffered_body = self.size(
            "admission.max_buffered_body",
            raw.max_buffered_body.as_ref(),
            DEFAULT_BUFFERED_BODY,
            u32::MAX as u64 * 1024,
        ) as usize;
        AdmissionSettings {
            max_buffered_body,
            order,
            global_max_in_flight: global_max_in_flight.max(1),
            queue_per_pool,
            timeout,
            brownout_wait: (!brownout_wait.is_zero()).then_some(brownout_wait),
            brownout_max_tokens: brownout_max_tokens.max(1),
        }
    }

    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetrySettings {
        let segment_bytes = raw.segment_bytes.unwrap_or(16 << 20);
        let disk_cap_bytes = raw.disk_cap_bytes.unwrap_or(1 << 30);
        if segment_bytes < 4096 {
            self.problem("telemetry.segment_bytes", "must be at least 4096");
        }
        if disk_cap_bytes < segment_bytes {
            self.problem("telemetry.disk_cap_bytes", "must be at least segment_bytes");
        }
        let on_full = raw.on_full.unwrap_or(OnFull::Serve);
        let replica = raw.replica.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "obleth".into())
        });
        let clickhouse = raw.clickhouse.as_ref().and_then(|ch| {
            let Some(url) = ch.url.clone() else {
                self.problem("telemetry.clickhouse.url", "is required");
                return None;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.problem(
                    "telemetry.clickhouse.url",
                    "must be the HTTP interface: http://host:8123",
                );
            }
            let batch_rows = ch.batch_rows.unwrap_or(5000);
            if batch_rows == 0 {
                self.problem("telemetry.clickhouse.batch_rows", "must be at least 1");
            }
            Some(ClickHouseSettings {
                connection: obleth_filters::telemetry::ClickHouseConfig {
                    url,
                    database: ch.database.clone().unwrap_or_else(|| "obleth".into()),
                    user: ch.user.clone(),
                    password: None,
                    timeout: self.positive_duration(
                        "telemetry.clickhouse.timeout",
                        ch.timeout.as_ref(),
                        Duration::from_secs(10),
                    ),
                },
                shipping: obleth_filters::telemetry::ShipperConfig {
                    batch_rows: batch_rows.max(1),
                    batch_interval: self.positive_duration(
                        "telemetry.clickhouse.batch_interval",
                        ch.batch_interval.as_ref(),
                        Duration::from_secs(1),
                    ),
                    replica: replica.clone(),
                    max_backoff: Duration::from_secs(30),
                },
                retention_days: ch.retention_days.unwrap_or(0),
            })
        });
        if on_full == OnFull::Refuse && clickhouse.is_none() {
            self.problem(
                "telemetry.on_full",
                "refuse needs telemetry.clickhouse: without it nothing empties the log, and once full every LLM request would be refused",
            );
        }
        TelemetrySettings {
            wal: obleth_filters::telemetry::WalConfig {
                dir: PathBuf::from(raw.wal_path.as_deref().unwrap_or("obleth-wal")),
                segment_bytes,
                disk_cap_bytes,
                queue: raw.queue.unwrap_or(10_000).max(1),
            },
            on_full,
            replica,
            clickhouse,
        }
    }

    pub(super) fn seed(&mut self, raw: RawSeed, pools: &[PoolConfig]) -> Seed {
        for (i, g) in raw.groups.iter().enumerate() {
            if let Err(e) = g.validate() {
                self.problem(&format!("seed.groups[{i}]"), e.to_string());
            }
        }
        for (i, t) in raw.tenants.iter().enumerate() {
            if let Err(e) = t.validate() {
                self.problem(&format!("seed.tenants[{i}]"), e.to_string());
            }
        }
        for (i, m) in raw.models.iter().enumerate() {
            let mut m = m.clone();
            if m.upstream_model.is_empty() {
                m.upstream_model = m.name.clone();
            }
            if let Err(e) = m.validate() {
                self.problem(&format!("seed.models[{i}]"), e.to_string());
            }
            if let Some(pool) = &m.pool {
                if !pools.iter().any(|p| &p.name == pool) {
                    self.problem(
                        &format!("seed.models[{i}].pool"),
                        format!("pool {pool:?} is not defined"),
                    );
                }
            }
        }
        self.model_namespace(&raw.models);
        for (i, k) in raw.keys.iter().enumerate() {
            if !k.secret.starts_with(obleth_filters::auth::SECRET_PREFIX) || k.secret.len() < 24 {
                self.problem(
                    &format!("seed.keys[{i}].secret"),
                    format!(
                        "must start with {:?} and be at least 24 characters",
                        obleth_filters::auth::SECRET_PREFIX
                    ),
                );
            }
        }
        Seed {
            groups: raw.groups,
            tenants: raw.tenants,
            models: raw
                .models
                .into_iter()
                .map(|mut m| {
                    if m.upstream_model.is_empty() {
                        m.upstream_model = m.name.clone();
                    }
                    m
                })
                .collect(),
            keys: raw.keys,
        }
    }

    /// Model names and aliases are one namespace: a request's `model`
    /// must resolve to exactly one model, or an alias could hand a tenant a
    /// model its allowlist does not name.
    pub(super) fn model_namespace(&mut self, models: &[crate::store::ModelSpec]) {
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            if owners.insert(&m.name, &m.name).is_some() {
                self.problem(&format!("seed.models[{i}].name"), "duplicate model name");
            }
        }
        for (i, m) in models.iter().enumerate() {
            for (j, alias) in m.aliases.iter().enumerate() {
                let key = format!("seed.models[{i}].aliases[{j}]");
                match owners.get(alias.as_str()) {
                    Some(owner) if *owner == m.name => self.problem(
                        &key,
                        format!("{alias:?} repeats this model's name or one of its aliases"),
                    ),
                    Some(owner) => {
                        let message = format!("{alias:?} already names the model {owner:?}");
                        self.problem(&key, message)
                    }
                    None => {
                        owners.insert(alias, &m.name);
                    }
                }
            }
        }
    }
}
