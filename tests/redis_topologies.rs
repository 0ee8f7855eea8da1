//! Budgets, key caching and invalidation on Redis as production runs it:
//! a Sentinel-managed master with a replica, and a 3-master, 3-replica
//! Redis Cluster, each of real `redis-server` processes started by the test
//! (see `redis_topology`). Two obleth replicas share each, as the scaling
//! guide runs them; a failover happens under load.

mod budget_common;
mod common;
mod redis_topology;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use budget_common::{budget_config, chat, standing};
use common::*;
use redis_topology::{ClusterSet, SentinelSet, MASTER_NAME};
use serde_json::Value;

const KEY: &str = "obk_topology_tests_000000000000";
const TENANT: &str = "/tenants/acme/budget";

fn yaml_list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

fn cluster_section(cluster: &ClusterSet, prefix: &str, fail_open: bool) -> String {
    format!(
        "redis:\n  mode: cluster\n  nodes: {}\n  prefix: '{prefix}'\nbudgets:\n  fail_open: {fail_open}\n",
        yaml_list(&cluster.addresses())
    )
}

fn sentinel_section(set: &SentinelSet, prefix: &str, acks: u32) -> String {
    format!(
        "redis:\n  mode: sentinel\n  sentinels: {}\n  master_name: {MASTER_NAME}\n  prefix: '{prefix}'\n  \
         replica_acks: {acks}\n  replica_ack_timeout: 200ms\nbudgets:\n  fail_open: false\n",
        yaml_list(&set.sentinel_addresses())
    )
}

/// Two replicas on one store and one Redis, the tenant `acme` seeded.
async fn replicas(
    upstream: &MockUpstream,
    db: &PgDatabase,
    tenant: &str,
    redis: &str,
) -> [Obleth; 2] {
    let sections = format!("store:\n  database_url: '{}'\n{redis}", db.url);
    let config = budget_config(upstream, tenant, KEY, &sections);
    [Obleth::start(&config).await, Obleth::start(&config).await]
}

/// The Redis key of `acme`'s committed spend, as obleth names it.
async fn spend_key(obleth: &Obleth, prefix: &str) -> String {
    let tenant = Admin::of(obleth)
        .ok("GET", "/tenants/acme", None, 200)
        .await;
    let id = tenant["id"].as_str().expect("tenant id");
    format!("{prefix}budget:{{t:{id}}}:spend")
}

/// What a load run saw: statuses, and tokens the upstream reported for
/// the admitted requests.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused_budget: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    reported: AtomicU64,
}

impl Tally {
    async fn record(&self, sent: reqwest::Result<reqwest::Response>) {
        let Ok(resp) = sent else {
            self.other.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let counter = match resp.status().as_u16() {
            200 => {
                let body: Value = resp.json().await.unwrap_or_default();
                let tokens = body["usage"]["total_tokens"].as_u64().unwrap_or(0);
                self.reported.fetch_add(tokens, Ordering::Relaxed);
                &self.ok
            }
            403 => &self.refused_budget,
            503 => &self.unavailable,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !std::ptr::eq(counter, &self.ok) {
            // A refused client backs off a little, as a real one would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn summary(&self) -> String {
        format!(
            "200: {}, 403: {}, 503: {}, other: {}",
            self.ok.load(Ordering::Relaxed),
            self.refused_budget.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

/// Closed-loop clients sending chat completions until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients per replica.
    fn start(replicas: &[&Obleth], clients: usize) -> Self {
        let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
        let mut tasks = Vec::new();
        for replica in replicas {
            for i in 0..clients as u64 {
                let url = replica.url("/v1/chat/completions");
                let (stop, tally) = (stop.clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = client
                            .post(&url)
                            .bearer_auth(KEY)
                            .json(&chat(20 + (i + n) % 30))
                            .send()
                            .await;
                        tally.record(sent).await;
                    }
                }));
            }
        }
        Load { stop, tally, tasks }
    }

    /// Waits up to 30 s for `holds` to hold of the tally so far.
    async fn until(&self, what: &str, holds: impl Fn(&Tally) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holds(&self.tally) {
            assert!(
                Instant::now() < deadline,
                "{what}: {}",
                self.tally.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        self.tally
    }
}

/// Sends load until the budget has refused `refusals` requests, and checks
/// that every other answer was a 200.
async fn exhaust(replicas: &[&Obleth], refusals: u64) -> Arc<Tally> {
    let load = Load::start(replicas, 8);
    load.until("the budget is exhausted", |t| {
        get(&t.refused_budget) >= refusals
    })
    .await;
    let tally = load.stop().await;
    assert_eq!(
        get(&tally.unavailable) + get(&tally.other),
        0,
        "{}",
        tally.summary()
    );
    tally
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Waits until `acme` holds no reservation and its committed spend is
/// what the upstream reported (settlements deferred through a failover
/// are replayed); returns the committed tokens.
async fn until_committed(obleth: &Obleth, reported: u64) -> u64 {
    let admin = Admin::of(obleth);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = admin.ok("GET", TENANT, None, 200).await;
        let committed = standing(&view, "committed_tokens");
        if standing(&view, "reserved_tokens") == 0 && committed == reported {
            return committed;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed} of {reported} reported tokens, view {view}\n{}",
            obleth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for settlement, then checks that `acme` was charged exactly what
/// the upstream reported and no more than `budget`; returns the spend.
async fn assert_exact(obleth: &Obleth, tally: &Tally, budget: u64, when: &str) -> u64 {
    let committed = until_committed(obleth, get(&tally.reported)).await;
    assert!(
        committed <= budget,
        "overspent {when}: {committed} of {budget} ({})",
        tally.summary()
    );
    committed
}

#[tokio::test]
async fn budgets_stay_exact_with_two_replicas_in_cluster_mode() {
    let cluster = ClusterSet::start().await;
    let (upstream, db, prefix) = shared_state().await;
    let [a, b] = replicas(
        &upstream,
        &db,
        "{ name: acme, budget_tokens: 4000 }",
        &cluster_section(&cluster, &prefix, false),
    )
    .await;
    let tally = exhaust(&[&a, &b], 20).await;
    let committed = assert_exact(&a, &tally, 4000, "with two replicas").await;
    // Both replicas see the one spend the cluster holds.
    let view = Admin::of(&b).ok("GET", TENANT, None, 200).await;
    assert_eq!(standing(&view, "committed_tokens"), committed);
    let mut conn = cluster.connection().await;
    let spend: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}budget:*:spend"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!spend.is_empty(), "the spend is in the cluster");
}

#[tokio::test]
async fn a_slot_moved_to_another_master_under_load_keeps_budgets_exact() {
    let cluster = ClusterSet::start().await;
    let (upstream, db, prefix) = shared_state().await;
    let [a, b] = replicas(
        &upstream,
        &db,
        "{ name: acme, budget_tokens: 4000 }",
        &cluster_section(&cluster, &prefix, false),
    )
    .await;
    let spend_key = spend_key(&a, &prefix).await;
    let load = Load::start(&[&a, &b], 6);
    load.until("traffic flows first", |t| get(&t.ok) >= 20)
        .await;
    let from = cluster.master_of(&spend_key).expect("a master");
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && cluster.nodes[i].cli(&["ROLE"]).starts_with("master"))
        .expect("another master");
    cluster.move_slot(&spend_key, to).await;
    let moved = get(&load.tally.ok);
    load.until("served from the new master", |t| get(&t.ok) >= moved + 20)
        .await;
    load.until("the budget is exhausted", |t| get(&t.refused_budget) >= 20)
        .await;
    let tally = load.stop().await;
    // MOVED and ASK are followed by the client; only a script that met the
    // scope's keys split between the two masters (TRYAGAIN) answers 503.
    assert_eq!(get(&tally.other), 0, "{}", tally.summary());
    let committed = assert_exact(&a, &tally, 4000, "across the move").await;
    eprintln!(
        "slot moved: {}, committed {committed} of 4000",
        tally.summary()
    );
}

#[tokio::test]
async fn key_invalidation_reaches_both_replicas_in_cluster_mode() {
    let cluster = ClusterSet::start().await;
    let (upstream, db, prefix) = shared_state().await;
    let [a, b] = replicas(
        &upstream,
        &db,
        "{ name: acme }",
        &cluster_section(&cluster, &prefix, true),
    )
    .await;
    for replica in [&a, &b] {
        let resp = post_chat(replica, KEY, &chat(5)).await;
        assert_eq!(resp.status(), 200, "the key works everywhere first");
    }
    // Disabled on one replica: the other stops honouring its cached copy.
    let keys = Admin::of(&a)
        .ok("GET", "/tenants/acme/keys", None, 200)
        .await;
    let key = format!("/keys/{}", keys[0]["id"].as_str().expect("key id"));
    Admin::of(&a)
        .patch(&key, serde_json::json!({ "disabled": true }), 200)
        .await;
    wait_for(
        "replica b refuses the disabled key",
        403,
        Duration::from_secs(5),
        || async { post_chat(&b, KEY, &chat(5)).await.status().as_u16() },
    )
    .await;
    Admin::of(&b)
        .patch(&key, serde_json::json!({ "disabled": false }), 200)
        .await;
    wait_for(
        "replica a takes the key back",
        200,
        Duration::from_secs(5),
        || async { post_chat(&a, KEY, &chat(5)).await.status().as_u16() },
    )
    .await;
    // The hot cache entries are in the cluster, under the prefix.
    let mut conn = cluster.connection().await;
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}key:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!cached.is_empty(), "keys are cached in the cluster");
}

#[tokio::test]
async fn a_cluster_master_killed_under_load_is_survived_as_fail_open_says() {
    let mut cluster = ClusterSet::start().await;
    let upstream = mock("vllm").await;
    let (open_db, closed_db) = (PgDatabase::create().await, PgDatabase::create().await);
    let (open_prefix, closed_prefix) = (redis_prefix(), redis_prefix());
    let tenant = "{ name: acme, budget_tokens: 100000000 }";
    let open = Obleth::start(&budget_config(
        &upstream,
        tenant,
        KEY,
        &format!(
            "store:\n  database_url: '{}'\n{}",
            open_db.url,
            cluster_section(&cluster, &open_prefix, true)
        ),
    ))
    .await;
    let closed = Obleth::start(&budget_config(
        &upstream,
        tenant,
        KEY,
        &format!(
            "store:\n  database_url: '{}'\n{}",
            closed_db.url,
            cluster_section(&cluster, &closed_prefix, false)
        ),
    ))
    .await;
    // Kill the master that holds the fail-open replica's budget.
    let spend_key = spend_key(&open, &open_prefix).await;
    let victim = cluster.master_of(&spend_key).expect("a master");

    let (open_load, closed_load) = (Load::start(&[&open], 4), Load::start(&[&closed], 4));
    open_load
        .until("traffic flows first", |t| get(&t.ok) >= 20)
        .await;
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    let served_before = get(&open_load.tally.ok);
    redis_topology::until("a replica is promoted", Duration::from_secs(30), || {
        cluster.master_of(&spend_key).is_some_and(|m| m != victim)
    })
    .await;
    let failover = killed.elapsed();
    open_load
        .until("fail_open serves while the slot fails over", |t| {
            get(&t.ok) > served_before
        })
        .await;
    // The old master comes back, as a replica of the promoted one.
    cluster.nodes[victim].restart();
    cluster.until_healthy().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (open_tally, closed_tally) = (open_load.stop().await, closed_load.stop().await);

    // Fail-open: every request was served, through the failover too.
    assert_eq!(
        get(&open_tally.unavailable) + get(&open_tally.other) + get(&open_tally.refused_budget),
        0,
        "fail_open serves everything: {}",
        open_tally.summary()
    );
    let admitted_unreserved = open.metric("obleth_budget_fail_open_total").await;
    assert!(
        admitted_unreserved > 0.0,
        "the fail-open replica admitted requests without a reservation while the slot had no master"
    );
    // Fail-closed: refused with 503 while its budget store was unsure,
    // never anything else.
    assert_eq!(
        get(&closed_tally.other) + get(&closed_tally.refused_budget),
        0,
        "{}",
        closed_tally.summary()
    );
    assert!(get(&closed_tally.ok) > 0, "{}", closed_tally.summary());
    eprintln!(
        "failover took {failover:?}; fail-open {}; fail-closed {}",
        open_tally.summary(),
        closed_tally.summary()
    );

    // After the failover both replicas budget exactly again: a burst on a
    // small budget stays within it.
    for obleth in [&open, &closed] {
        let admin = Admin::of(obleth);
        admin
            .ok("POST", "/tenants/acme/budget/reset", None, 200)
            .await;
        admin
            .patch(
                "/tenants/acme",
                serde_json::json!({ "budget_tokens": 2000 }),
                200,
            )
            .await;
        let tally = exhaust(&[obleth], 10).await;
        assert_exact(obleth, &tally, 2000, "after the failover").await;
    }
}

#[tokio::test]
async fn budgets_stay_exact_across_a_sentinel_failover() {
    let set = SentinelSet::start().await;
    let (upstream, db, prefix) = shared_state().await;
    let [a, b] = replicas(
        &upstream,
        &db,
        "{ name: acme, budget_tokens: 4000 }",
        &sentinel_section(&set, &prefix, 1),
    )
    .await;
    let old_master = set.master_port();
    let load = Load::start(&[&a, &b], 6);
    load.until("traffic flows before the failover", |t| get(&t.ok) >= 20)
        .await;
    let before = get(&load.tally.ok);
    let new_master = set.fail_over().await;
    assert_ne!(new_master, old_master);
    // Both replicas follow the new master without a restart, and say so.
    for replica in [&a, &b] {
        replica
            .wait_stderr(
                &format!("is now 127.0.0.1:{new_master}"),
                Duration::from_secs(20),
            )
            .await;
    }
    // Spend goes on on the new master up to the budget. (Reservations
    // whose acknowledgement the failover cut off hold budget until they are
    // taken back, a few seconds later.)
    let admin = Admin::of(&a);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let view = admin.ok("GET", TENANT, None, 200).await;
        let spent = standing(&view, "committed_tokens");
        if spent >= 3500 && get(&load.tally.refused_budget) >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spend stalled after the failover: {view} {}",
            load.tally.summary()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tally = load.stop().await;
    assert_eq!(get(&tally.other), 0, "{}", tally.summary());
    assert!(
        get(&tally.ok) > before,
        "served after the failover: {}",
        tally.summary()
    );
    let committed = assert_exact(&a, &tally, 4000, "across the failover").await;
    eprintln!(
        "sentinel failover: {}, committed {committed} of 4000",
        tally.summary()
    );
}
