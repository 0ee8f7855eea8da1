//! The Helm chart (deploy/k8s/obleth) renders what the production checklist
//! and the scaling guide ask for. Each test runs `helm template` and reads
//! the manifests; tests/deploy/helm.sh validates them against the schemas.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/obleth");
const ALL_FEATURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/deploy/helm-all-features.yaml"
);
const PRODUCTION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/k8s/obleth/values-production.yaml"
);
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// `helm template` with these arguments: the documents, or helm's error.
fn try_render(args: &[&str]) -> Result<Manifests, String> {
    let out = Command::new("helm")
        .args(["template", "obleth", CHART, "--namespace", "llm"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run helm ({e}): run scripts/setup.sh, which installs the deployment tools"
            )
        });
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm writes UTF-8");
    let docs = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("helm renders YAML"))
        .filter(|doc| !doc.is_null())
        .collect();
    Ok(Manifests { docs })
}

fn render(args: &[&str]) -> Manifests {
    try_render(args).unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}"))
}

fn defaults() -> Manifests {
    render(&[])
}

fn all_features() -> Manifests {
    render(&["-f", ALL_FEATURES])
}

fn production() -> Manifests {
    render(&["-f", PRODUCTION])
}

struct Manifests {
    docs: Vec<Value>,
}

impl Manifests {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn find(&self, kind: &str) -> Option<&Value> {
        let found = self.all(kind);
        assert!(found.len() <= 1, "more than one {kind}");
        found.first().copied()
    }

    fn one(&self, kind: &str) -> &Value {
        self.find(kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    fn pod_spec(&self) -> &Value {
        &self.one("StatefulSet")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        container(self.pod_spec(), "obleth")
    }

    fn job_pod_spec(&self) -> &Value {
        &self.one("Job")["spec"]["template"]["spec"]
    }

    /// The configuration file the pods mount, parsed.
    fn config(&self) -> Value {
        let name = self.pod_spec()["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "config")
            .expect("a config volume")["configMap"]["name"]
            .as_str()
            .expect("a ConfigMap name")
            .to_owned();
        let text = self.named("ConfigMap", &name)["data"]["obleth.yaml"]
            .as_str()
            .expect("obleth.yaml in the ConfigMap");
        serde_norway::from_str(text).expect("the configuration is YAML")
    }

    fn checksum(&self) -> String {
        self.one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("a checksum/config annotation")
            .to_owned()
    }
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container, name).and_then(|e| e["value"].as_str())
}

/// The container port number behind a named port.
fn port_number(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
        .as_u64()
        .expect("a port number")
}

/// A duration as obleth reads it (humantime, as src/config does).
fn duration(value: &Value) -> Duration {
    humantime::parse_duration(value.as_str().expect("a duration string")).expect("a duration")
}

fn names(values: &Value) -> BTreeSet<String> {
    values
        .as_sequence()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

#[test]
fn hpa_scales_the_statefulset_from_three_to_twenty_pods_at_seventy_percent_cpu() {
    let chart = defaults();
    let hpa = chart.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        chart.one("StatefulSet")["metadata"]["name"]
    );
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 20);
    let metrics = hpa["spec"]["metrics"].as_sequence().expect("metrics");
    assert_eq!(metrics.len(), 1, "CPU only unless queueDepth is enabled");
    assert_eq!(metrics[0]["resource"]["name"], "cpu");
    assert_eq!(metrics[0]["resource"]["target"]["type"], "Utilization");
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
    assert!(
        chart.container()["resources"]["requests"]["cpu"].is_string(),
        "utilization needs a CPU request"
    );
    assert!(
        chart.one("StatefulSet")["spec"].get("replicas").is_none(),
        "with the HPA on, an upgrade must not reset the pod count"
    );
}

#[test]
fn queue_depth_adds_the_scaling_guides_pods_metric() {
    for chart in [all_features(), production()] {
        let hpa = chart.one("HorizontalPodAutoscaler");
        let pods = hpa["spec"]["metrics"]
            .as_sequence()
            .expect("metrics")
            .iter()
            .find(|m| m["type"] == "Pods")
            .expect("a Pods metric");
        assert_eq!(pods["pods"]["metric"]["name"], "obleth_queue_depth");
        assert_eq!(pods["pods"]["target"]["type"], "AverageValue");
        assert_eq!(pods["pods"]["target"]["averageValue"], "20");
    }
}

#[test]
fn without_the_hpa_the_statefulset_keeps_its_replica_count() {
    let chart = render(&["--set", "hpa.enabled=false"]);
    assert!(chart.find("HorizontalPodAutoscaler").is_none());
    assert_eq!(chart.one("StatefulSet")["spec"]["replicas"], 3);
}

#[test]
fn service_monitor_scrapes_the_metrics_port_every_five_to_fifteen_seconds_when_enabled() {
    assert!(
        defaults().find("ServiceMonitor").is_none(),
        "off by default: it needs the Prometheus Operator"
    );
    for chart in [all_features(), production()] {
        let monitor = chart.one("ServiceMonitor");
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
        let interval = duration(&endpoint["interval"]);
        assert!(
            (Duration::from_secs(5)..=Duration::from_secs(15)).contains(&interval),
            "scrape interval {interval:?}"
        );
        assert!(duration(&endpoint["scrapeTimeout"]) <= interval);
        // It selects the metrics Service, whose port 9091 is the container's.
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        let services: Vec<_> = chart
            .all("Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| s["metadata"]["labels"][k.as_str().unwrap()] == *v)
            })
            .collect();
        assert_eq!(services.len(), 1, "the ServiceMonitor selects one Service");
        let port = &services[0]["spec"]["ports"][0];
        assert_eq!(port["name"], "metrics");
        assert_eq!(port["port"], 9091);
        assert_eq!(port_number(chart.container(), "metrics"), 9091);
    }
}

#[test]
fn prometheus_rule_carries_every_alert_with_its_runbook_when_enabled() {
    assert!(defaults().find("PrometheusRule").is_none());
    let source: Value =
        serde_norway::from_str(&std::fs::read_to_string(ALERTS).expect("alerts.yml")).unwrap();
    let alert_names = |groups: &Value| -> BTreeSet<String> {
        groups
            .as_sequence()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_sequence().expect("rules"))
            .filter_map(|r| r["alert"].as_str().map(str::to_owned))
            .collect()
    };
    let expected = alert_names(&source["groups"]);
    for alert in [
        "OblethQueueSaturated",
        "OblethTelemetryDropped",
        "OblethUpstream5xxSpike",
        "OblethHighLatencyP99",
        "OblethPodRestarting",
        "OblethPoolNoHealthyServer",
        "OblethBudgetStoreDown",
        "OblethTelemetryBacklogGrowing",
        "OblethCertificateExpiringSoon",
    ] {
        assert!(expected.contains(alert), "{alert} in alerts.yml");
    }

    let chart = all_features();
    let groups = &chart.one("PrometheusRule")["spec"]["groups"];
    assert_eq!(alert_names(groups), expected);
    for rule in groups
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
    {
        let alert = rule["alert"].as_str().unwrap();
        assert!(rule["expr"].is_string(), "{alert}: expr");
        assert!(rule["for"].is_string(), "{alert}: for");
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{alert}: severity"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation].is_string(),
                "{alert}: {annotation}"
            );
        }
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            runbook.starts_with("https://docs.example.com/obleth/docs/operations.md#"),
            "{alert}: runbook_url {runbook} under prometheusRule.runbookBaseUrl"
        );
    }
}

#[test]
fn disruption_budget_lets_one_server_pod_go_at_a_time() {
    let chart = defaults();
    let pdb = chart.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"],
        chart.one("StatefulSet")["spec"]["selector"]
    );
}

#[test]
fn network_policy_opens_each_port_only_to_its_peers() {
    let chart = all_features();
    let policy = chart.one("NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"],
        chart.one("StatefulSet")["spec"]["selector"]
    );
    assert_eq!(
        names(&policy["spec"]["policyTypes"]),
        BTreeSet::from(["Ingress".to_owned()])
    );
    let rules = policy["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    let rule_for = |port: &str| {
        let matching: Vec<_> = rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .collect();
        assert_eq!(matching.len(), 1, "one rule opens {port}");
        assert_eq!(matching[0]["ports"].as_sequence().unwrap().len(), 1);
        let from = matching[0]["from"]
            .as_sequence()
            .expect("every rule names its peers");
        assert!(!from.is_empty(), "an empty from would admit everyone");
        from.clone()
    };
    assert_eq!(rules.len(), 3, "data, admin and metrics, nothing else");

    let data = rule_for("http");
    assert_eq!(
        data[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    let admin = rule_for("admin");
    assert!(
        admin.iter().any(|peer| peer["podSelector"]
            .as_mapping()
            .is_some_and(|m| m.is_empty())
            && peer.get("namespaceSelector").is_none()),
        "the admin port is open to the release's own namespace"
    );
    assert!(admin.iter().any(|peer| {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "platform-tools"
    }));
    let metrics = rule_for("metrics");
    assert_eq!(
        metrics[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );

    let obleth = chart.container();
    assert_eq!(port_number(obleth, "http"), 8080);
    assert_eq!(port_number(obleth, "admin"), 9090);
    assert_eq!(port_number(obleth, "metrics"), 9091);
}

#[test]
fn network_policy_closes_a_port_whose_peer_list_is_empty() {
    let chart = render(&["--set", "networkPolicy.dataFrom=null"]);
    let rules = chart.one("NetworkPolicy")["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    let ports: Vec<_> = rules
        .iter()
        .flat_map(|r| r["ports"].as_sequence().unwrap())
        .map(|p| p["port"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["admin", "metrics"], "no rule opens the data port");
}

#[test]
fn containers_run_as_non_root_on_a_read_only_root_without_capabilities() {
    let chart = all_features();
    for (what, pod) in [
        ("server", chart.pod_spec()),
        ("migrations", chart.job_pod_spec()),
    ] {
        assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_ne!(pod["securityContext"]["runAsUser"], 0, "{what}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        for c in pod["containers"].as_sequence().unwrap() {
            let security = &c["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{what}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(
                names(&security["capabilities"]["drop"]),
                BTreeSet::from(["ALL".to_owned()])
            );
            assert!(security["capabilities"].get("add").is_none(), "{what}");
            assert_eq!(
                security["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
        }
    }
    let account = chart.one("ServiceAccount");
    assert_eq!(account["automountServiceAccountToken"], false);
}

#[test]
fn probes_ask_healthz_and_readyz_on_the_admin_port() {
    let chart = defaults();
    let obleth = chart.container();
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(obleth[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(obleth[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(port_number(obleth, "admin"), 9090);
    assert_eq!(chart.config()["admin"]["address"], "0.0.0.0:9090");
}

#[test]
fn grace_period_outlasts_the_prestop_sleep_and_the_drain() {
    for chart in [defaults(), production(), all_features()] {
        let grace = duration(&chart.config()["server"]["grace"]);
        let sleep = chart.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("a preStop sleep");
        let period = chart.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(period) > grace + Duration::from_secs(sleep),
            "terminationGracePeriodSeconds {period} against server.grace {grace:?} after a {sleep}s preStop"
        );
    }
}

#[test]
fn render_refuses_a_drain_the_grace_period_cannot_hold() {
    // Defaults: a 5 s preStop sleep in a 45 s grace period.
    for args in [
        ["--set", "config.server.grace=40s"],
        ["--set", "config.server.grace=2m"],
        ["--set", "terminationGracePeriodSeconds=30"],
    ] {
        let error = try_render(&args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} rendered"));
        assert!(
            error.contains("terminationGracePeriodSeconds") && error.contains("server.grace"),
            "{args:?}: {error}"
        );
    }
    try_render(&["--set", "config.server.grace=39s"]).expect("39 s + 5 s fits in 45 s");
}

#[test]
fn pods_listen_on_every_interface_and_never_migrate() {
    for chart in [defaults(), production(), all_features()] {
        let config = chart.config();
        assert_eq!(config["store"]["migrate"], false);
        assert!(
            config["store"].get("database_url").is_none(),
            "it comes from the Secret"
        );
        let listeners = config["listeners"].as_sequence().expect("listeners");
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0]["address"], "0.0.0.0:8080");
        assert_eq!(config["admin"]["address"], "0.0.0.0:9090");
        assert_eq!(config["metrics"]["address"], "0.0.0.0:9091");
    }
}

#[test]
fn migrations_run_as_a_hook_job_before_install_and_upgrade() {
    let chart = defaults();
    let job = chart.one("Job");
    let hooks: BTreeSet<_> = job["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .expect("a helm.sh/hook annotation")
        .split(',')
        .collect();
    assert_eq!(hooks, BTreeSet::from(["pre-install", "pre-upgrade"]));
    let migrate = container(chart.job_pod_spec(), "migrate");
    let command: Vec<_> = migrate["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command[1..],
        ["migrate", "--config", "/etc/obleth/obleth.yaml"]
    );
    assert_eq!(chart.job_pod_spec()["restartPolicy"], "Never");

    // Hooks run before the release's ConfigMap exists: the Job mounts its
    // own, made by an earlier hook, with the same file.
    let volume = chart.job_pod_spec()["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .expect("a config volume");
    let own = chart.named("ConfigMap", volume["configMap"]["name"].as_str().unwrap());
    let weight = |doc: &Value| -> i64 {
        doc["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .expect("a hook weight")
            .parse()
            .unwrap()
    };
    assert!(own["metadata"]["annotations"]["helm.sh/hook"].is_string());
    assert!(weight(own) < weight(job));
    let job_config: Value =
        serde_norway::from_str(own["data"]["obleth.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(job_config, chart.config());

    assert!(render(&["--set", "migrations.enabled=false"])
        .find("Job")
        .is_none());
}

#[test]
fn secrets_come_from_the_existing_secret_only() {
    let chart = all_features();
    assert!(chart.find("Secret").is_none(), "the chart holds no secret");
    for (what, obleth) in [
        ("server", chart.container()),
        ("migrations", container(chart.job_pod_spec(), "migrate")),
    ] {
        for (key, optional) in [
            ("OBLETH_ADMIN_TOKEN", false),
            ("OBLETH_DATABASE_URL", false),
            ("OBLETH_API_KEY_PEPPER", false),
            ("OBLETH_ENCRYPTION_KEY", false),
            ("OBLETH_CLICKHOUSE_PASSWORD", true),
            ("OBLETH_REDIS_URL", true),
            ("OBLETH_REDIS_PASSWORD", true),
        ] {
            let var = env(obleth, key).unwrap_or_else(|| panic!("{what}: {key}"));
            assert!(
                var.get("value").is_none(),
                "{what}: {key} is never a literal"
            );
            let source = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(source["name"], "obleth-test", "{what}: {key}");
            assert_eq!(source["key"], key, "{what}: {key}");
            assert_eq!(
                source["optional"].as_bool().unwrap_or(false),
                optional,
                "{what}: {key}"
            );
        }
        for var in obleth["env"].as_sequence().unwrap() {
            if let Some(source) = var["valueFrom"].get("secretKeyRef") {
                assert_eq!(
                    source["name"], "obleth-test",
                    "{what}: every secret is the Secret's"
                );
            }
        }
    }
}

#[test]
fn checklist_environment_reaches_the_pods_and_the_wal_is_on_the_volume() {
    let chart = defaults();
    let obleth = chart.container();
    assert_eq!(env_value(obleth, "OBLETH_GLOBAL_MAX_IN_FLIGHT"), Some("64"));
    assert_eq!(env_value(obleth, "OBLETH_BROWNOUT_WAIT_MS"), Some("750"));
    assert_eq!(env_value(obleth, "OBLETH_FAIL_OPEN"), Some("true"));
    assert!(
        env(obleth, "OBLETH_OTEL_ENDPOINT").is_none(),
        "no tracing unless asked"
    );

    let wal = env_value(obleth, "OBLETH_WAL_PATH").expect("OBLETH_WAL_PATH");
    assert!(!wal.starts_with("/tmp"), "the WAL is not on /tmp: {wal}");
    let mount = obleth["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "data")
        .expect("the data volume is mounted");
    let mount_path = mount["mountPath"].as_str().unwrap();
    assert!(
        wal.starts_with(&format!("{mount_path}/")),
        "{wal} under {mount_path}"
    );
    let statefulset = chart.one("StatefulSet");
    let claim = &statefulset["spec"]["volumeClaimTemplates"][0];
    assert_eq!(
        claim["metadata"]["name"], "data",
        "a claim per pod backs the mount"
    );
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());

    // The StatefulSet's governing Service is the headless admin Service.
    let governing = chart.named(
        "Service",
        statefulset["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(governing["spec"]["clusterIP"], "None");
    assert_eq!(governing["spec"]["ports"][0]["port"], 9090);

    let traced = all_features();
    assert_eq!(
        env_value(traced.container(), "OBLETH_OTEL_ENDPOINT"),
        Some("http://otel-collector.observability:4318")
    );
    assert_eq!(
        env_value(traced.container(), "OBLETH_FAIL_OPEN"),
        Some("false")
    );
}

#[test]
fn data_admin_and_metrics_each_have_a_service() {
    let chart = defaults();
    let ports: BTreeSet<(String, u64)> = chart
        .all("Service")
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_sequence().unwrap())
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([
            ("http".to_owned(), 8080),
            ("admin".to_owned(), 9090),
            ("metrics".to_owned(), 9091)
        ])
    );
}

#[test]
fn pods_spread_over_zones_and_nodes() {
    let chart = defaults();
    let selector = &chart.one("StatefulSet")["spec"]["selector"];
    let constraints = chart.pod_spec()["topologySpreadConstraints"]
        .as_sequence()
        .expect("topologySpreadConstraints");
    let keys: BTreeSet<_> = constraints
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
    );
    for c in constraints {
        assert_eq!(
            c["labelSelector"], *selector,
            "each constraint counts the server pods"
        );
    }
}

#[test]
fn a_configuration_change_rolls_the_pods_and_nothing_else_does() {
    let base = defaults().checksum();
    assert_ne!(
        render(&["--set", "config.server.grace=20s"]).checksum(),
        base
    );
    assert_ne!(
        render(&["--set", "config.access_log.format=httplog"]).checksum(),
        base
    );
    assert_eq!(
        render(&["--set", "resources.requests.cpu=2"]).checksum(),
        base
    );
}
