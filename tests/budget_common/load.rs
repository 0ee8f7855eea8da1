//! Closed-loop load on replicas sharing one budget, and the checks that
//! spend stayed exact: what the budget tests against Redis topologies and
//! leases share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{budget_config, chat, standing};
use crate::common::*;

/// The key the load sends with.
pub const KEY: &str = "obk_topology_tests_000000000000";
/// `acme`'s budget in the admin API.
pub const TENANT: &str = "/tenants/acme/budget";

/// Two replicas on one store and one Redis, the tenant `acme` seeded.
pub async fn replicas(
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
pub async fn spend_key(obleth: &Obleth, prefix: &str) -> String {
    let tenant = Admin::of(obleth)
        .ok("GET", "/tenants/acme", None, 200)
        .await;
    let id = tenant["id"].as_str().expect("tenant id");
    format!("{prefix}budget:{{t:{id}}}:spend")
}

/// What a load run saw: statuses, and tokens the upstream reported for
/// the admitted requests.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub refused_budget: AtomicU64,
    pub unavailable: AtomicU64,
    pub other: AtomicU64,
    pub reported: AtomicU64,
}

impl Tally {
    pub async fn record(&self, sent: reqwest::Result<reqwest::Response>) {
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

    pub fn summary(&self) -> String {
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
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients per replica.
    pub fn start(replicas: &[&Obleth], clients: usize) -> Self {
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
    pub async fn until(&self, what: &str, holds: impl Fn(&Tally) -> bool) {
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

    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        self.tally
    }
}

/// Sends load until the budget has refused `refusals` requests, and checks
/// that every other answer was a 200.
pub async fn exhaust(replicas: &[&Obleth], refusals: u64) -> Arc<Tally> {
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

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Waits until `acme` holds no reservation and its committed spend is
/// what the upstream reported (settlements deferred through a failover
/// are replayed); returns the committed tokens.
pub async fn until_committed(obleth: &Obleth, reported: u64) -> u64 {
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
pub async fn assert_exact(obleth: &Obleth, tally: &Tally, budget: u64, when: &str) -> u64 {
    let committed = until_committed(obleth, get(&tally.reported)).await;
    assert!(
        committed <= budget,
        "overspent {when}: {committed} of {budget} ({})",
        tally.summary()
    );
    committed
}
