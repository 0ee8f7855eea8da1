//! How many usage records per second the write-ahead log makes durable on
//! this machine (framing, checksums, group commit with `fdatasync`), with
//! one or more threads appending as fast as the queue takes them.
//!
//!   cargo run --release -p obleth-filters --example wal_throughput [SECONDS] [THREADS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use obleth_filters::telemetry::{Durability, Outcome, UsageRecord, Wal, WalConfig};

fn record(n: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("{n:032x}"),
        record_id: format!("{:032x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        time_ms: 1_764_547_200_000 + n,
        tenant: "ten_0123456789abcdef".into(),
        key: "key_0123456789abcdef".into(),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        route: "openai".into(),
        admission: "fast".into(),
        queue_wait_ms: 0,
        ttfb_ms: 120,
        total_ms: 900,
        status: 200,
        input_tokens: 512,
        output_tokens: 128,
        estimated: false,
        cost_usd: 0.000_896,
        upstream: "10.0.0.7:8000".into(),
        replica: "obleth-0".into(),
        outcome: Outcome::Completed,
        mcp: None,
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let threads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("obleth-wal-bench-{}", std::process::id()));
    let wal = Arc::new(Wal::open(WalConfig {
        dir: dir.clone(),
        segment_bytes: 64 << 20,
        disk_cap_bytes: 16 << 30,
        queue: 100_000,
        durability: Durability::Disk,
        sync_interval: Duration::from_millis(50),
    })?);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let appenders: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut n = t << 40;
                while Instant::now() < deadline {
                    if wal.under_pressure() {
                        std::thread::yield_now();
                        continue;
                    }
                    if wal.append(record(n)).is_ok() {
                        n += 1;
                    }
                }
            })
        })
        .collect();
    for a in appenders {
        let _ = a.join();
    }
    wal.sync(Duration::from_secs(30));
    let elapsed = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    let dropped: u64 = stats.dropped.iter().map(|(_, n)| n).sum();
    println!(
        "{} records durable in {elapsed:.2} s from {threads} thread(s): {:.0} records/s, {:.1} MB/s on disk, {dropped} dropped",
        stats.durable,
        stats.durable as f64 / elapsed,
        stats.disk_bytes as f64 / elapsed / 1e6,
    );
    drop(wal);
    std::fs::remove_dir_all(&dir)
}
