//! How many admission decisions the scheduler makes per second: the fast
//! path (room, nobody waiting), and a contended pool where every slot is
//! handed from one waiter to the next in fair order among many tenants.
//!
//!     cargo run --release -p obleth-filters --example admission_throughput

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use obleth_filters::admission::{Capacity, QueueOrder, Scheduler, Ticket};

fn ticket(tenant: usize, key: usize) -> Ticket {
    Ticket {
        pool: "m".into(),
        group: format!("g{}", tenant % 4),
        group_weight: 100,
        tenant: format!("t{tenant}"),
        tenant_weight: 100 + (tenant as u32 % 3) * 100,
        tenant_max_in_flight: None,
        key: format!("k{key}"),
        key_weight: 100,
        key_max_in_flight: None,
        estimated_tokens: 100 + (key as u64 % 7) * 50,
    }
}

fn scheduler(pool_size: u32) -> Scheduler {
    let s = Scheduler::new(Capacity {
        global: 1024,
        queue_per_pool: 100_000,
        timeout: Duration::from_secs(60),
        brownout_after: None,
        order: QueueOrder::Fair,
    });
    s.set_pool_size("m", pool_size);
    s
}

fn main() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let s = scheduler(1024);
        let t = ticket(1, 1);
        let n = 200_000;
        let started = Instant::now();
        for _ in 0..n {
            if let Ok(permit) = s.admit(t.clone()).await {
                drop(permit);
            }
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!("fast path: {rate:.0} admissions/s (one task, admit and release)");

        for (tenants, waiters) in [(10, 64), (100, 512), (1000, 4096)] {
            let s = scheduler(8);
            let admitted = Arc::new(AtomicU64::new(0));
            let stop = Instant::now() + Duration::from_secs(2);
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..waiters {
                let (s, admitted) = (s.clone(), admitted.clone());
                let t = ticket(w % tenants, w);
                tasks.spawn(async move {
                    while Instant::now() < stop {
                        if let Ok(permit) = s.admit(t.clone()).await {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                            permit.correct(t.estimated_tokens / 2);
                        }
                    }
                });
            }
            let started = Instant::now();
            while tasks.join_next().await.is_some() {}
            let rate = admitted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            println!(
                "contended: {rate:.0} admissions/s ({tenants} tenants, {waiters} clients always waiting, pool of 8)"
            );
        }
    });
    Ok(())
}
