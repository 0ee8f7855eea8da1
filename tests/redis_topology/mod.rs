//! Redis in its production topologies, from Debian's packages on free
//! local ports, one per test: a master with a replica watched by three
//! sentinels (`redis-sentinel`), and a cluster of three masters with a
//! replica each (`redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create`). Every process is a child of the test and
//! dies with it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, TempDir};

/// Sentinel's name for the master in these tests.
pub const MASTER_NAME: &str = "obleth";

/// One `redis-server` (or sentinel) process.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    program: &'static str,
}

impl Node {
    fn spawn(program: &'static str, port: u16, args: Vec<String>) -> Self {
        let mut node = Node {
            port,
            child: None,
            args,
            program,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} starts (scripts/setup.sh installs it): {e}",
                    self.program
                )
            });
        self.child = Some(child);
        wait_port(self.port);
    }

    /// Kills the process at once (`SIGKILL`), as a crashed host would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same configuration (a cluster node keeps
    /// its identity in its nodes file).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT ARGS…`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 100 ms until it holds, failing after `limit`. The
/// test's other tasks (its load) run while it waits.
pub async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn server_args(dir: &std::path::Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
        // A replica is in sync at once, not after the default 5 s wait
        // for more replicas to share the transfer.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A master, one replica and three sentinels.
pub struct SentinelSet {
    _dir: TempDir,
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
}

impl SentinelSet {
    pub async fn start() -> Self {
        let dir = TempDir::new();
        let data = |name: &str| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("data dir");
            path
        };
        let master_port = free_port();
        let master = Node::spawn(
            "redis-server",
            master_port,
            server_args(&data("master"), master_port, &[]),
        );
        let replica_port = free_port();
        let replica = Node::spawn(
            "redis-server",
            replica_port,
            server_args(
                &data("replica"),
                replica_port,
                &["--replicaof", "127.0.0.1", &master_port.to_string()],
            ),
        );
        until("the replica is in sync", Duration::from_secs(10), || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await;
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        data(&format!("sentinel-{i}")).display()
                    ),
                )
                .expect("sentinel config");
                Node::spawn("redis-sentinel", port, vec![conf.display().to_string()])
            })
            .collect::<Vec<_>>();
        for s in &sentinels {
            until(
                "every sentinel knows the replica and the other sentinels",
                Duration::from_secs(20),
                || {
                    let master = s.cli(&["SENTINEL", "master", MASTER_NAME]);
                    let field = |name: &str| {
                        let lines: Vec<&str> = master.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    };
                    field("num-slaves") == "1" && field("num-other-sentinels") == "2"
                },
            )
            .await;
        }
        SentinelSet {
            _dir: dir,
            master,
            replica,
            sentinels,
        }
    }

    /// The sentinels' addresses as obleth's configuration lists them.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> u16 {
        let answer = self.sentinels[0].cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Has the sentinels promote the replica (`SENTINEL FAILOVER`) and
    /// waits until the old master follows the new one.
    pub async fn fail_over(&self) -> u16 {
        let before = self.master_port();
        let answer = self.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert_eq!(answer, "OK", "SENTINEL FAILOVER");
        let mut after = before;
        until(
            "the sentinels name a new master",
            Duration::from_secs(20),
            || {
                after = self.master_port();
                after != before && cli(after, &["ROLE"]).starts_with("master")
            },
        )
        .await;
        until(
            "the old master replicates the new one",
            Duration::from_secs(20),
            || cli(before, &["INFO", "replication"]).contains("master_link_status:up"),
        )
        .await;
        after
    }
}

/// Three masters with one replica each.
pub struct ClusterSet {
    _dir: TempDir,
    pub nodes: Vec<Node>,
}

impl ClusterSet {
    pub async fn start() -> Self {
        let dir = TempDir::new();
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            let port = free_port();
            // The cluster bus listens on its own port.
            let bus = free_port();
            if port == bus {
                continue;
            }
            let data = dir.path().join(format!("node-{port}"));
            std::fs::create_dir_all(&data).expect("data dir");
            let nodes_file = data.join("nodes.conf").display().to_string();
            nodes.push(Node::spawn(
                "redis-server",
                port,
                server_args(
                    &data,
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &nodes_file,
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-node-timeout",
                        "1000",
                        "--logfile",
                        &data.join("log").display().to_string(),
                    ],
                ),
            ));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(created.success(), "redis-cli --cluster create");
        let set = ClusterSet { _dir: dir, nodes };
        set.until_healthy().await;
        set
    }

    /// Waits until every running node says the cluster is ok and three
    /// replicas are in sync with their masters (only those can take over).
    pub async fn until_healthy(&self) {
        until("the cluster is ok", Duration::from_secs(30), || {
            let running = self.nodes.iter().filter(|n| n.child.is_some());
            let mut in_sync = 0;
            for n in running {
                if !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                    return false;
                }
                if n.cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
                {
                    in_sync += 1;
                }
            }
            in_sync == 3
        })
        .await;
    }

    /// The seed nodes as obleth's configuration lists them.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// The index of the node that is master of the slot of `key`, if one
    /// (not known to have failed) is.
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = self
            .running()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot");
        let nodes = self.running().cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node address");
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Moves the slot of `key` to the master `to` while clients use it, as
    /// `redis-cli --cluster reshard` does for each slot: the source answers
    /// ASK for keys already moved, then every master learns the new owner
    /// (MOVED from then on).
    pub async fn move_slot(&self, key: &str, to: usize) {
        let from = self.master_of(key).expect("a master");
        assert_ne!(from, to, "the slot is already there");
        let slot = self.running().cli(&["CLUSTER", "KEYSLOT", key]);
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (src.cli(&["CLUSTER", "MYID"]), dst.cli(&["CLUSTER", "MYID"]));
        assert_eq!(
            dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]),
            "OK"
        );
        assert_eq!(
            src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]),
            "OK"
        );
        loop {
            let listed = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "10"]);
            let keys: Vec<&str> = listed.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = dst.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            assert_eq!(src.cli(&args), "OK", "MIGRATE");
            // Clients meet the half-moved slot (ASK) meanwhile; ten keys at
            // a time, as redis-cli's default pipeline moves them.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for node in [dst, src] {
            assert_eq!(
                node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]),
                "OK"
            );
        }
        until(
            "every node knows the slot moved",
            Duration::from_secs(10),
            || self.master_of(key) == Some(to),
        )
        .await;
    }

    fn running(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node")
    }

    /// A cluster client on the seed nodes, for looking at what obleth keeps.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }
}
