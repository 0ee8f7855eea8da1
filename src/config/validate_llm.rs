//! Validation of the LLM plane: admission, telemetry and the seed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use obleth_filters::admission::QueueOrder;

use super::raw::*;
use super::*;

impl Validator {
    /// The shared Redis, if any: one server (`url`), a Sentinel-managed
    /// master, or a cluster. Keys that belong to another mode are refused
    /// rather than ignored.
    pub(super) fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
        use obleth_filters::redis_link::{NodeAuth, Topology};
        let mode = raw.mode.unwrap_or(RedisMode::Standalone);
        let foreign = |key: &str, set: bool| set.then(|| key.to_string());
        let mut out_of_mode = Vec::new();
        match mode {
            RedisMode::Standalone => {
                out_of_mode.extend(foreign("redis.sentinels", raw.sentinels.is_some()));
                out_of_mode.extend(foreign("redis.master_name", raw.master_name.is_some()));
                out_of_mode.extend(foreign("redis.nodes", raw.nodes.is_some()));
                out_of_mode.extend(foreign("redis.username", raw.username.is_some()));
            }
            RedisMode::Sentinel => {
                out_of_mode.extend(foreign("redis.url", raw.url.is_some()));
                out_of_mode.extend(foreign("redis.nodes", raw.nodes.is_some()));
            }
            RedisMode::Cluster => {
                out_of_mode.extend(foreign("redis.url", raw.url.is_some()));
                out_of_mode.extend(foreign("redis.sentinels", raw.sentinels.is_some()));
                out_of_mode.extend(foreign("redis.master_name", raw.master_name.is_some()));
            }
        }
        let mode_name = format!("{mode:?}").to_lowercase();
        for key in out_of_mode {
            let hint = match mode {
                RedisMode::Standalone if key == "redis.username" => {
                    "put the credentials in redis.url (redis://user:password@host:6379)"
                }
                RedisMode::Standalone => "set redis.mode: sentinel or cluster to use it",
                _ => "belongs to another redis.mode",
            };
            self.problem(
                &key,
                format!("not used when redis.mode is {mode_name}; {hint}"),
            );
        }
        // The password is a secret: `OBLETH_REDIS_PASSWORD`, set by the loader.
        let auth = NodeAuth {
            username: raw.username,
            password: None,
        };
        let topology = match mode {
            RedisMode::Standalone => {
                let url = raw.url?;
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    self.problem(
                        "redis.url",
                        "must start with redis://, rediss:// or unix://",
                    );
                }
                Topology::Standalone { url }
            }
            RedisMode::Sentinel => {
                let sentinels = self.redis_addresses("redis.sentinels", raw.sentinels);
                let master_name = raw.master_name.unwrap_or_default();
                if master_name.is_empty() {
                    self.problem(
                        "redis.master_name",
                        "required when redis.mode is sentinel: the name the sentinels monitor",
                    );
                }
                Topology::Sentinel {
                    sentinels,
                    master_name,
                    auth,
                }
            }
            RedisMode::Cluster => Topology::Cluster {
                nodes: self.redis_addresses("redis.nodes", raw.nodes),
                auth,
            },
        };
        if let Err(e) = topology.validate() {
            self.problem(&format!("redis.{}", topology_key(&topology)), e.to_string());
        }
        let replica_acks = raw.replica_acks.unwrap_or(0);
        if replica_acks > 16 {
            self.problem("redis.replica_acks", "at most 16");
        }
        let replica_ack_timeout = self.positive_duration(
            "redis.replica_ack_timeout",
            raw.replica_ack_timeout.as_ref(),
            Duration::from_millis(100),
        );
        if replica_ack_timeout > Duration::from_millis(500) {
            self.problem(
                "redis.replica_ack_timeout",
                "at most 500ms: a budget check waits for Redis at most 750ms in all",
            );
        }
        Some(RedisConfig {
            topology,
            prefix: raw.prefix.unwrap_or_else(|| "obleth:".into()),
            replica_acks,
            replica_ack_timeout,
        })
    }

    /// `host:port` entries or `redis://` URLs, as URLs; at least one.
    fn redis_addresses(&mut self, key: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let list = raw.unwrap_or_default();
        if list.is_empty() {
            self.problem(key, "needs at least one host:port");
        }
        list.into_iter()
            .map(|a| {
                if a.contains("://") {
                    a
                } else {
                    format!("redis://{a}")
                }
            })
            .collect()
    }

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
            let urls = match &ch.url {
                None => Vec::new(),
                Some(OneOrMany::One(url)) => vec![url.clone()],
                Some(OneOrMany::Many(urls)) => urls.clone(),
            };
            if urls.is_empty() {
                self.problem("telemetry.clickhouse.url", "is required");
                return None;
            }
            for url in &urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.problem(
                        "telemetry.clickhouse.url",
                        format!("{url:?} must be the HTTP interface: http://host:8123"),
                    );
                }
            }
            let database = ch.database.clone().unwrap_or_else(|| "obleth".into());
            if let Some(cluster) = &ch.cluster {
                if let Err(why) = clickhouse_cluster_name(cluster) {
                    self.problem("telemetry.clickhouse.cluster", why);
                }
                // Part of the ZooKeeper paths of the replicated tables.
                if let Err(why) = clickhouse_cluster_name(&database) {
                    self.problem(
                        "telemetry.clickhouse.database",
                        format!("with a cluster, {}", why.replacen("must", "it must", 1)),
                    );
                }
            } else if urls.len() > 1 {
                self.problem(
                    "telemetry.clickhouse.url",
                    "several URLs are the replicas of one cluster: set telemetry.clickhouse.cluster",
                );
            }
            let batch_rows = ch.batch_rows.unwrap_or(5000);
            if batch_rows == 0 {
                self.problem("telemetry.clickhouse.batch_rows", "must be at least 1");
            }
            Some(ClickHouseSettings {
                connection: obleth_filters::telemetry::ClickHouseConfig {
                    urls,
                    database,
                    cluster: ch.cluster.clone(),
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
                durability: raw.durability.unwrap_or_default(),
                sync_interval: self.positive_duration(
                    "telemetry.sync_interval",
                    raw.sync_interval.as_ref(),
                    Duration::from_millis(50),
                ),
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
        let mut mcp_names = std::collections::HashSet::new();
        for (i, m) in raw.mcp_servers.iter().enumerate() {
            if let Err(e) = m.validate() {
                self.problem(&format!("seed.mcp_servers[{i}]"), e.to_string());
            }
            if !mcp_names.insert(&m.name) {
                self.problem(
                    &format!("seed.mcp_servers[{i}].name"),
                    "duplicate MCP server name",
                );
            }
        }
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
            mcp_servers: raw.mcp_servers,
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

/// The key that holds a topology's addresses, for errors.
fn topology_key(topology: &obleth_filters::redis_link::Topology) -> &'static str {
    use obleth_filters::redis_link::Topology;
    match topology {
        Topology::Standalone { .. } => "url",
        Topology::Sentinel { .. } => "sentinels",
        Topology::Cluster { .. } => "nodes",
    }
}

/// A ClickHouse cluster (as named in the servers' `<remote_servers>`) or,
/// with a cluster, the database, which is part of the ZooKeeper paths:
/// letters, digits, `_` and `-`, starting with a letter or `_`, at most 64
/// (nothing that needs quoting in SQL, XML or a path).
fn clickhouse_cluster_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be letters, digits, _ and - (starting with a letter or _), at most 64"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use obleth_filters::redis_link::{NodeAuth, Topology};

    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(text, Path::new("test.yaml"), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map_err(|e| match e {
            ConfigError::Invalid(p) => p.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn a_sentinel_set_is_read_with_its_password_from_the_environment() {
        let config = parse(
            "redis:\n  mode: sentinel\n  sentinels: [10.0.0.1:26379, 'redis://:s3@10.0.0.2:26379']\n  \
             master_name: obleth\n  username: gw\n  replica_acks: 1\n",
            &[("OBLETH_REDIS_PASSWORD", "hunter2")],
        )
        .expect("valid");
        let redis = config.redis.expect("redis configured");
        assert_eq!(
            redis.topology,
            Topology::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://:s3@10.0.0.2:26379".into()
                ],
                master_name: "obleth".into(),
                auth: NodeAuth {
                    username: Some("gw".into()),
                    password: Some("hunter2".into()),
                },
            }
        );
        assert_eq!(redis.replica_acks, 1);
    }

    #[test]
    fn cluster_seed_nodes_come_from_the_file_or_the_environment() {
        let config = parse(
            "redis:\n  mode: cluster\n  nodes: [10.0.0.1:7000]\n",
            &[("OBLETH_REDIS_NODES", "10.0.0.5:7000, 10.0.0.6:7000")],
        )
        .expect("valid");
        match config.redis.expect("redis").topology {
            Topology::Cluster { nodes, .. } => {
                assert_eq!(nodes, ["redis://10.0.0.5:7000", "redis://10.0.0.6:7000"])
            }
            other => panic!("{other:?}"),
        }
        // OBLETH_REDIS_URL keeps meaning one server.
        let config = parse("", &[("OBLETH_REDIS_URL", "redis://10.0.0.9:6379")]).expect("valid");
        assert_eq!(
            config.redis.expect("redis").topology,
            Topology::Standalone {
                url: "redis://10.0.0.9:6379".into()
            }
        );
    }

    #[test]
    fn a_mode_from_the_environment_replaces_the_files_addresses_of_another_mode() {
        let config = parse(
            "redis:\n  url: redis://redis:6379\n",
            &[
                ("OBLETH_REDIS_MODE", "sentinel"),
                ("OBLETH_REDIS_SENTINELS", "s1:26379,s2:26379"),
                ("OBLETH_REDIS_MASTER_NAME", "obleth"),
            ],
        )
        .expect("valid");
        assert!(matches!(
            config.redis.expect("redis").topology,
            Topology::Sentinel { ref sentinels, .. } if sentinels.len() == 2
        ));
        // Both the mode and another mode's address from the environment is
        // a contradiction, and said so.
        let problems = parse(
            "",
            &[
                ("OBLETH_REDIS_MODE", "cluster"),
                ("OBLETH_REDIS_NODES", "n1:7000"),
                ("OBLETH_REDIS_URL", "redis://r:6379"),
            ],
        )
        .expect_err("invalid");
        assert!(
            problems
                .join("\n")
                .contains("redis.url: not used when redis.mode is cluster"),
            "{problems:?}"
        );
    }

    #[test]
    fn keys_of_another_mode_and_missing_addresses_are_refused_where_they_are() {
        let problems = parse(
            "redis:\n  mode: sentinel\n  url: redis://10.0.0.1:6379\n  nodes: [a:1]\n",
            &[],
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(
            all.contains("test.yaml:3:3: redis.url: not used when redis.mode is sentinel"),
            "{all}"
        );
        assert!(
            all.contains("redis.nodes: not used when redis.mode is sentinel"),
            "{all}"
        );
        assert!(
            all.contains("redis.sentinels: needs at least one host:port"),
            "{all}"
        );
        assert!(
            all.contains("redis.master_name: required when redis.mode is sentinel"),
            "{all}"
        );

        let problems = parse(
            "redis:\n  url: redis://10.0.0.1:6379\n  sentinels: [a:1]\n  replica_ack_timeout: 2s\n",
            &[],
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("redis.sentinels: not used when redis.mode is standalone; set redis.mode: sentinel or cluster"), "{all}");
        assert!(
            all.contains("redis.replica_ack_timeout: at most 500ms"),
            "{all}"
        );

        let problems = parse("redis:\n  mode: cluster\n", &[]).expect_err("invalid");
        assert!(
            problems
                .join("\n")
                .contains("redis.nodes: needs at least one host:port"),
            "{problems:?}"
        );
    }

    fn connection(text: &str, env: &[(&str, &str)]) -> obleth_filters::telemetry::ClickHouseConfig {
        match parse(text, env) {
            Ok(c) => c.telemetry.clickhouse.expect("clickhouse").connection,
            Err(p) => panic!("{p:?}"),
        }
    }

    #[test]
    fn one_url_is_one_server_without_a_cluster() {
        let c = connection("telemetry: { clickhouse: { url: 'http://a:8123' } }", &[]);
        assert_eq!(c.urls, ["http://a:8123"]);
        assert_eq!(c.cluster, None);
        assert_eq!(c.database, "obleth");
    }

    #[test]
    fn a_list_of_urls_names_the_replicas_of_a_cluster() {
        let c = connection(
            "telemetry: { clickhouse: { url: ['http://a:8123', 'http://b:8123'], cluster: usage_1 } }",
            &[],
        );
        assert_eq!(c.urls, ["http://a:8123", "http://b:8123"]);
        assert_eq!(c.cluster.as_deref(), Some("usage_1"));
    }

    #[test]
    fn the_environment_gives_one_url_or_a_comma_separated_list() {
        let file = "telemetry: { clickhouse: { url: 'http://a:8123', cluster: c } }";
        let one = connection(file, &[("OBLETH_CLICKHOUSE_URL", "http://x:8123")]);
        assert_eq!(one.urls, ["http://x:8123"]);
        let two = connection(
            file,
            &[("OBLETH_CLICKHOUSE_URL", "http://x:8123, http://y:8123")],
        );
        assert_eq!(two.urls, ["http://x:8123", "http://y:8123"]);
    }

    #[test]
    fn an_invalid_cluster_name_is_refused() {
        for name in ["'x'", "1st", "-a", "a b", "a/b", "a`b", "{shard}", ""] {
            let text = format!(
                "telemetry: {{ clickhouse: {{ url: 'http://a:8123', cluster: \"{name}\" }} }}"
            );
            let problems = parse(&text, &[]).expect_err(name);
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("telemetry.clickhouse.cluster")
                        && p.contains("letters, digits, _ and -")),
                "{name}: {problems:?}"
            );
        }
    }

    #[test]
    fn with_a_cluster_the_database_must_fit_a_zookeeper_path() {
        let problems = parse(
            "telemetry: { clickhouse: { url: 'http://a:8123', cluster: c, database: 'a/b' } }",
            &[],
        )
        .expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("telemetry.clickhouse.database")),
            "{problems:?}"
        );
        // Without a cluster the name is only quoted, as before.
        assert!(parse(
            "telemetry: { clickhouse: { url: 'http://a:8123', database: 'a b' } }",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn several_urls_need_a_cluster_and_each_must_be_http() {
        let problems = parse(
            "telemetry: { clickhouse: { url: ['http://a:8123', 'http://b:8123'] } }",
            &[],
        )
        .expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("set telemetry.clickhouse.cluster")),
            "{problems:?}"
        );
        let problems = parse(
            "telemetry: { clickhouse: { url: ['http://a:8123', 'tcp://b:9000'], cluster: c } }",
            &[],
        )
        .expect_err("refused");
        assert!(
            problems.iter().any(|p| p.contains("tcp://b:9000")),
            "{problems:?}"
        );
        let problems = parse("telemetry: { clickhouse: { url: [] } }", &[]).expect_err("refused");
        assert!(
            problems.iter().any(|p| p.contains("is required")),
            "{problems:?}"
        );
    }
}
