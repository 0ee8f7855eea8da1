//! The Redis budget scripts against a real Redis (127.0.0.1:6379), checked
//! step by step against the in-process store: both must decide alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use obleth_filters::budget::{
    BudgetStore, Cost, Decision, Limits, LocalBudgets, RedisBudgets, Scope,
};

async fn redis_store() -> RedisBudgets {
    static N: AtomicUsize = AtomicUsize::new(0);
    let link = obleth_filters::redis_link::RedisLink::connect("redis://127.0.0.1:6379")
        .await
        .expect("url");
    assert!(
        link.is_up(),
        "redis on 127.0.0.1:6379 (scripts/services.sh)"
    );
    let n = N.fetch_add(1, Ordering::Relaxed);
    let started = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let prefix = format!("obleth-budget-test-{}-{n}-{started}:", std::process::id());
    RedisBudgets::new(link, prefix)
}

fn scope(
    tpm: u64,
    budget_tokens: Option<u64>,
    budget_usd_micros: Option<u64>,
    period: &str,
) -> Scope {
    Scope {
        id: "t:acme".into(),
        limits: Limits {
            tokens_per_minute: tpm,
            budget_tokens,
            budget_usd_micros,
            period: period.into(),
        },
    }
}

fn cost(tokens: u64, usd_micros: u64) -> Cost {
    Cost { tokens, usd_micros }
}

/// The store's answer to reserving `tokens` (and no USD) for `id` at `now_ms`.
async fn reserve(
    store: &dyn BudgetStore,
    s: &Scope,
    id: &str,
    tokens: u64,
    now_ms: i64,
) -> Decision {
    store
        .reserve(s, id, cost(tokens, 0), now_ms)
        .await
        .expect("reserve")
}

/// Whether a reservation was admitted, whatever it left in the bucket.
fn admitted(decision: Decision) -> bool {
    matches!(decision, Decision::Admitted { .. })
}

/// One step: reserve or settle, with the time it happens at.
enum Step {
    Reserve(&'static str, Cost, i64),
    Settle(&'static str, Cost, i64),
}

async fn replay(store: &dyn BudgetStore, s: &Scope, steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for step in steps {
        out.push(match step {
            Step::Reserve(id, c, t) => {
                format!("{:?}", store.reserve(s, id, *c, *t).await.expect("reserve"))
            }
            Step::Settle(id, c, t) => format!(
                "settled={}",
                store.settle(s, id, *c, *t).await.expect("settle")
            ),
        });
    }
    out
}

#[tokio::test]
async fn redis_and_in_process_budgets_decide_alike() {
    use Step::*;
    let s = scope(600, Some(2_000), Some(5_000), "2026-11");
    let steps = [
        Reserve("a", cost(500, 1_000), 0),
        Reserve("b", cost(200, 1_000), 0),
        Settle("a", cost(120, 300), 100),
        Settle("a", cost(120, 300), 100),
        Reserve("b", cost(200, 1_000), 100),
        Reserve("c", cost(450, 1_000), 100),
        Reserve("c", cost(450, 1_000), 15_000),
        Settle("b", cost(200, 1_000), 20_000),
        Settle("c", cost(450, 2_500), 20_000),
        Reserve("d", cost(10, 1_500), 60_000),
        Reserve("e", cost(601, 0), 60_000),
    ];
    let redis = redis_store().await;
    let local = LocalBudgets::default();
    let from_redis = replay(&redis, &s, &steps).await;
    let from_local = replay(&local, &s, &steps).await;
    assert_eq!(from_redis, from_local);
    assert_eq!(
        from_redis[1],
        format!(
            "{:?}",
            Decision::RateLimited {
                retry_after_ms: 10_000
            }
        )
    );
    assert_eq!(
        from_redis[3], "settled=false",
        "a second settlement changes nothing"
    );
    assert_eq!(
        from_redis[9],
        format!("{:?}", Decision::BudgetExhausted),
        "USD budget: 300+1000+2500+1500 > 5000"
    );
    assert_eq!(from_redis[10], format!("{:?}", Decision::TooLarge));
    assert_eq!(
        redis.standing(&s, 60_000).await.unwrap(),
        local.standing(&s, 60_000).await.unwrap()
    );
    let standing = redis.standing(&s, 60_000).await.unwrap();
    assert_eq!(standing.committed_tokens, 120 + 200 + 450);
    assert_eq!(standing.reserved_tokens, 0);
    redis.reset_term(&s).await.unwrap();
    local.reset_term(&s).await.unwrap();
    assert_eq!(
        redis.standing(&s, 60_000).await.unwrap().committed_tokens,
        0
    );
    assert_eq!(
        redis.standing(&s, 60_000).await.unwrap(),
        local.standing(&s, 60_000).await.unwrap()
    );
}

#[tokio::test]
async fn a_new_month_starts_from_zero_committed_spend() {
    let redis = redis_store().await;
    let november = scope(0, Some(1_000), None, "2026-11");
    let december = scope(0, Some(1_000), None, "2026-12");
    reserve(&redis, &november, "x", 900, 0).await;
    redis.settle(&november, "x", cost(900, 0), 0).await.unwrap();
    assert_eq!(
        reserve(&redis, &november, "y", 200, 0).await,
        Decision::BudgetExhausted
    );
    assert!(admitted(reserve(&redis, &december, "y", 200, 0).await));
    let mut lifetime = scope(0, Some(1_000), None, "lifetime");
    lifetime.id = "t:forever".into();
    reserve(&redis, &lifetime, "z", 1_000, 0).await;
    assert_eq!(
        reserve(&redis, &lifetime, "w", 1, 0).await,
        Decision::BudgetExhausted
    );
}

#[tokio::test]
async fn concurrent_reservations_never_exceed_the_term_budget() {
    let redis = Arc::new(redis_store().await);
    let s = Arc::new(scope(0, Some(10_000), None, "lifetime"));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (redis, s) = (redis.clone(), s.clone());
            tokio::spawn(async move {
                redis
                    .reserve(&s, &format!("r{i}"), cost(170, 0), 0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut fitted = 0;
    for t in tasks {
        if admitted(t.await.unwrap()) {
            fitted += 1;
        }
    }
    assert_eq!(fitted, 10_000 / 170, "exactly as many as fit");
}

#[tokio::test]
async fn a_reservation_whose_request_never_settles_is_released_after_its_ttl() {
    let store = redis_store()
        .await
        .with_reservation_ttl(std::time::Duration::from_secs(1));
    let s = scope(0, Some(1000), None, "lifetime");
    let now = 1_700_000_000_000;
    // A process reserved 800 and died before settling.
    assert!(admitted(reserve(&store, &s, "lost", 800, now).await));
    assert_eq!(
        reserve(&store, &s, "next", 300, now + 500).await,
        Decision::BudgetExhausted,
        "held while the reservation may still settle"
    );
    assert!(admitted(reserve(&store, &s, "next", 300, now + 1500).await));
    let standing = store.standing(&s, now + 1500).await.unwrap();
    assert_eq!(standing.reserved_tokens, 300, "{standing:?}");
    // A settled reservation leaves nothing behind to release later.
    assert!(store
        .settle(&s, "next", cost(200, 0), now + 1600)
        .await
        .unwrap());
    assert!(admitted(reserve(&store, &s, "third", 10, now + 9000).await));
    let standing = store.standing(&s, now + 9000).await.unwrap();
    assert_eq!(
        (standing.committed_tokens, standing.reserved_tokens),
        (200, 10)
    );
}

#[tokio::test]
async fn committed_spend_is_raised_to_the_ledger_and_never_lowered() {
    let redis = redis_store().await;
    let local = LocalBudgets::default();
    for store in [&redis as &dyn BudgetStore, &local] {
        let s = scope(0, Some(10_000), None, "2026-11");
        let now = 1_700_000_000_000;
        store.reserve(&s, "a", cost(100, 5), now).await.unwrap();
        store.settle(&s, "a", cost(60, 3), now).await.unwrap();
        // Redis lost part of the period; the ledger knows 900 were spent.
        assert!(store.raise_committed(&s, cost(900, 40), 0).await.unwrap());
        let standing = store.standing(&s, now).await.unwrap();
        assert_eq!(
            (standing.committed_tokens, standing.committed_usd_micros),
            (900, 40)
        );
        // A ledger behind the live spend changes nothing.
        assert!(!store.raise_committed(&s, cost(500, 10), 0).await.unwrap());
        let standing = store.standing(&s, now).await.unwrap();
        assert_eq!(standing.committed_tokens, 900);
        assert_eq!(
            reserve(store, &s, "b", 9_200, now).await,
            Decision::BudgetExhausted,
            "the restored spend counts against the budget"
        );
        // A reset after the ledger's start makes that ledger stale.
        store.reset_term(&s).await.unwrap();
        assert!(!store.raise_committed(&s, cost(900, 40), 0).await.unwrap());
        assert_eq!(store.standing(&s, now).await.unwrap().committed_tokens, 0);
    }
}
