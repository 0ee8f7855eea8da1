//! Budgets, key caching and invalidation on Redis as production runs it:
//! a Sentinel-managed master with a replica, and a 3-master, 3-replica
//! Redis Cluster, each of real `redis-server` processes started by the test
//! (see `redis_topology`). Two obleth replicas share each, as the scaling
//! guide runs them; a failover happens under load.

mod budget_common;
mod common;
mod redis_topology;

use std::time::{Duration, Instant};

use budget_common::load::*;
use budget_common::{budget_config, chat, standing};
use common::*;
use redis_topology::{ClusterSet, SentinelSet, MASTER_NAME};

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
