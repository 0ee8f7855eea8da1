//! A replicated ClickHouse of its own: a standalone ZooKeeper (Debian's
//! `zookeeper` package, run as a child process on a free port with its data
//! in a temporary directory) and ClickHouse 18.16 replicas of one shard,
//! each naming the cluster in `<remote_servers>`, with `<zookeeper>`,
//! `<macros>` and `<distributed_ddl>`, so `ON CLUSTER` statements and
//! replicated tables work as in production.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_ports, ClickHouse, TempDir};

/// Debian's ZooKeeper: the jar's manifest names every dependency.
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper server, stopped when dropped.
pub struct ZooKeeper {
    child: Option<Child>,
    /// The client port, on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
}

impl ZooKeeper {
    /// Starts ZooKeeper and waits (30 s at most) until it serves requests
    /// (ClickHouse 18.16's DDL worker gives up for good if its first
    /// connection fails, so answering at all is not enough).
    pub async fn start() -> Self {
        let dir = TempDir::new();
        let [port] = free_ports();
        let config = dir.path().join("zoo.cfg");
        // A short tick allows short sessions, so a killed ClickHouse's
        // session (and its replica's "active" mark) expires in seconds.
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\n\
                 dataDir={}/data\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr\n",
                dir.path().display()
            ),
        )
        .expect("zookeeper config");
        let log = std::fs::File::create(dir.path().join("zookeeper.log")).expect("log");
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", ZOOKEEPER_JAR])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java runs ZooKeeper (scripts/setup.sh installs zookeeper)");
        let zookeeper = Self {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !zookeeper.serving() {
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not come up: {}",
                std::fs::read_to_string(zookeeper.dir.path().join("zookeeper.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        zookeeper
    }

    /// Whether the server says it serves, in standalone mode, to `srvr`.
    fn serving(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = String::new();
        stream.write_all(b"srvr").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("Mode: standalone")
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// ZooKeeper and the replicas of one shard of the cluster `name`.
pub struct ClickHouseCluster {
    /// As `<remote_servers>` names the cluster: what `ON CLUSTER` takes.
    pub name: String,
    /// Replica `i` has the macros `shard=01`, `replica=r{i+1}`.
    pub replicas: Vec<ClickHouse>,
    /// Shared by the replicas; stopped last (fields drop in order).
    pub zookeeper: ZooKeeper,
}

impl ClickHouseCluster {
    /// Starts ZooKeeper and `n` replicas of one shard.
    pub async fn start(name: &str, n: usize) -> Self {
        let zookeeper = ZooKeeper::start().await;
        assert!((1..=3).contains(&n), "one to three replicas");
        // Picked at once, so no port is handed out twice.
        let all = free_ports::<9>();
        let ports: Vec<[u16; 3]> = all.chunks(3).take(n).map(|c| [c[0], c[1], c[2]]).collect();
        let hosts: String = ports
            .iter()
            .map(|[_, tcp, _]| {
                format!("<replica><host>127.0.0.1</host><port>{tcp}</port></replica>")
            })
            .collect();
        let mut replicas = Vec::new();
        for (i, [http, tcp, interserver]) in ports.iter().enumerate() {
            let extra = format!(
                "<interserver_http_port>{interserver}</interserver_http_port>\
                 <interserver_http_host>127.0.0.1</interserver_http_host>\n\
                 <remote_servers><{name}><shard><internal_replication>true</internal_replication>{hosts}</shard></{name}></remote_servers>\n\
                 <zookeeper><node><host>127.0.0.1</host><port>{}</port></node>\
                 <session_timeout_ms>3000</session_timeout_ms></zookeeper>\n\
                 <macros><shard>01</shard><replica>r{}</replica></macros>\n\
                 <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n",
                zookeeper.port,
                i + 1
            );
            replicas.push(ClickHouse::start_with(*http, *tcp, &extra).await);
        }
        Self {
            name: name.to_string(),
            replicas,
            zookeeper,
        }
    }

    /// The replicas' HTTP interfaces, as a YAML flow list.
    pub fn urls_yaml(&self) -> String {
        let urls: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("'{}'", r.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Kills replica `i` (SIGKILL) and waits until the others see it
    /// gone: its ZooKeeper session expired. A replica restarted before
    /// then finds its old "active" mark still there and, on 18.16, stays
    /// inactive (not replicating) until a retry ten seconds later.
    pub async fn kill(&mut self, i: usize, database: &str) {
        self.replicas[i].stop();
        let others: Vec<usize> = (0..self.replicas.len()).filter(|j| *j != i).collect();
        let expected = others.len().to_string();
        for j in others {
            self.until_active(j, database, &expected).await;
        }
    }

    /// Restarts replica `i` and waits until it is active again.
    pub async fn restart(&mut self, i: usize, database: &str) {
        self.replicas[i].resume().await;
        let all = self.replicas.len().to_string();
        self.until_active(i, database, &all).await;
    }

    /// Waits (20 s at most) until replica `i` counts `n` active replicas of
    /// every replicated table of `database`.
    async fn until_active(&self, i: usize, database: &str, n: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sql = format!(
            "SELECT DISTINCT active_replicas FROM system.replicas WHERE database = '{database}'"
        );
        loop {
            let got = self.replicas[i].query(&sql).await;
            if got.as_deref() == Ok(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: active replicas {got:?}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until replica `i` is active, has read the whole replication
    /// log of every table of `database` and has no part left to fetch
    /// (what the others inserted is in), whatever merges stay queued.
    pub async fn fetched(&self, i: usize, database: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let sql = format!(
            "SELECT (SELECT count() FROM system.replicas WHERE database = '{database}' \
               AND (is_readonly OR active_replicas < total_replicas OR log_pointer <= log_max_index)) \
             + (SELECT count() FROM system.replication_queue \
               WHERE database = '{database}' AND type = 'GET_PART')"
        );
        loop {
            let got = self.replicas[i].query(&sql).await;
            if got.as_deref() == Ok("0") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} still fetching: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until replica `i` has fetched everything its queue names for
    /// `table` (`SYSTEM SYNC REPLICA`), retrying within `limit` while the
    /// replica is still reconnecting to ZooKeeper.
    pub async fn sync(&self, i: usize, table: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.replicas[i]
                .query(&format!("SYSTEM SYNC REPLICA {table}"))
                .await;
            if got.is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                let queue = self.replicas[i]
                    .query(
                        "SELECT table, type, new_part_name, source_replica, num_tries, last_exception \
                         FROM system.replication_queue FORMAT TSV",
                    )
                    .await;
                panic!("replica {i} did not sync {table}: {got:?}; its queue: {queue:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
