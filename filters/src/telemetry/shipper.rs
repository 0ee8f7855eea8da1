//! The shipper: reads the write-ahead log from a persisted checkpoint and
//! inserts it into a sink (ClickHouse) in batches bounded by size and time.
//! The checkpoint advances only after the sink acknowledged a batch, and
//! fully shipped segments are deleted. Every batch has an id derived from
//! where it starts; after a failure or a restart the sink is asked how many
//! rows of that batch it already holds, so a batch that went through just
//! before the error (a timeout, a crash) is never inserted twice.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::wal::{read_segment, segment_path, segments, Counters, Position};
use super::{UsageRecord, Wal};

/// Where usage records go.
#[async_trait]
pub trait UsageSink: Send + Sync {
    /// Inserts `rows` as batch `batch`, all or nothing.
    async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError>;
    /// How many rows of `batch` the sink already holds.
    async fn inserted(&self, batch: &str) -> Result<u64, SinkError>;
}

/// A sink that could not take a batch; it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Batching and retry bounds.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// A batch is sent once it has this many records ...
    pub batch_rows: usize,
    /// ... or its oldest record waited this long.
    pub batch_interval: Duration,
    /// Names batches, so replicas sharing a sink never collide.
    pub replica: String,
    /// Longest pause between retries.
    pub max_backoff: Duration,
}

const CHECKPOINT: &str = "checkpoint";

impl Wal {
    /// Ships this log to `sink` until the process ends.
    pub async fn ship(&self, sink: Arc<dyn UsageSink>, config: ShipperConfig) {
        let dir = self.dir().to_path_buf();
        let mut shipper = Shipper {
            checkpoint: load_checkpoint(&dir),
            dir,
            sink,
            config,
            counters: self.counters.clone(),
            durable: self.durable(),
            verify: true,
        };
        shipper.run().await;
    }
}

struct Shipper {
    dir: PathBuf,
    sink: Arc<dyn UsageSink>,
    config: ShipperConfig,
    counters: Arc<Counters>,
    durable: watch::Receiver<Position>,
    checkpoint: Position,
    /// Ask the sink what it holds before the next insert (after a start
    /// or a failure, when the last batch may have gone through unseen).
    verify: bool,
}

impl Shipper {
    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut last_warning: Option<Instant> = None;
        let mut waiting_since: Option<Instant> = None;
        loop {
            let durable = *self.durable.borrow_and_update();
            self.skip_missing_segments(durable);
            let until = (self.checkpoint.segment == durable.segment).then_some(durable.offset);
            let path = segment_path(&self.dir, self.checkpoint.segment);
            let read = match read_segment(
                &path,
                self.checkpoint.offset,
                until,
                self.config.batch_rows,
            ) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot read the write-ahead log: {e}");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let sealed = self.checkpoint.segment < durable.segment;
            if read.records.is_empty() {
                if sealed {
                    if let Some(at) = read.torn_at {
                        tracing::warn!(
                            segment = self.checkpoint.segment,
                            offset = at,
                            "skipping a torn record at the end of a write-ahead log segment"
                        );
                    }
                    self.advance(Position {
                        segment: self.checkpoint.segment + 1,
                        offset: 0,
                    });
                    continue;
                }
                waiting_since = None;
                let _ = self.durable.changed().await;
                continue;
            }
            // Wait for a full batch, at most batch_interval.
            let full = read.records.len() >= self.config.batch_rows || sealed;
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if !full && since.elapsed() < self.config.batch_interval {
                let rest = self.config.batch_interval - since.elapsed();
                let _ = tokio::time::timeout(rest, self.durable.changed()).await;
                continue;
            }
            waiting_since = None;
            match self.ship(&read.records).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if last_warning.take().is_some() {
                        tracing::warn!("usage shipping recovered");
                    }
                }
                Err(e) => {
                    self.verify = true;
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(
                            backlog_bytes = self.counters.backlog_bytes.load(Ordering::Relaxed),
                            "cannot ship usage records, retrying with backoff: {e}"
                        );
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// Inserts one batch (minus what the sink already holds of it) and
    /// moves the checkpoint past it.
    async fn ship(&mut self, records: &[(UsageRecord, u64)]) -> Result<(), SinkError> {
        let batch = format!(
            "{}:{}:{}",
            self.config.replica, self.checkpoint.segment, self.checkpoint.offset
        );
        let mut done = 0;
        if self.verify {
            done = (self.sink.inserted(&batch).await? as usize).min(records.len());
            self.verify = false;
        }
        if done < records.len() {
            let rows: Vec<UsageRecord> = records[done..].iter().map(|(r, _)| r.clone()).collect();
            let batch = if done == 0 {
                batch
            } else {
                // The rest starts somewhere else and gets its own id.
                let at = records[done - 1].1;
                format!("{}:{}:{at}", self.config.replica, self.checkpoint.segment)
            };
            self.sink.insert(&batch, &rows).await?;
        }
        self.counters
            .shipped
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let end = records
            .last()
            .map_or(self.checkpoint.offset, |(_, end)| *end);
        self.advance(Position {
            segment: self.checkpoint.segment,
            offset: end,
        });
        Ok(())
    }

    /// Persists the checkpoint and deletes segments wholly behind it.
    fn advance(&mut self, to: Position) {
        let shipped = if to.segment == self.checkpoint.segment {
            to.offset.saturating_sub(self.checkpoint.offset)
        } else {
            0
        };
        self.checkpoint = to;
        if let Err(e) = save_checkpoint(&self.dir, to) {
            tracing::error!("cannot save the shipping checkpoint: {e}");
        }
        self.counters
            .backlog_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(shipped))
            })
            .ok();
        for (n, path) in segments(&self.dir).unwrap_or_default() {
            if n >= to.segment {
                break;
            }
            let len = fs::metadata(&path).map_or(0, |m| m.len());
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.counters.disk_bytes.fetch_sub(
                        len.min(self.counters.disk_bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot delete a shipped segment: {e}")
                }
            }
        }
        self.recount_backlog();
    }

    /// Bytes on disk from the checkpoint on.
    fn recount_backlog(&self) {
        let disk = self.counters.disk_bytes.load(Ordering::Relaxed);
        self.counters.backlog_bytes.store(
            disk.saturating_sub(self.checkpoint.offset),
            Ordering::Relaxed,
        );
    }

    /// Moves a checkpoint that names a segment no longer (or never) on disk
    /// to the oldest one that is.
    fn skip_missing_segments(&mut self, durable: Position) {
        if segment_path(&self.dir, self.checkpoint.segment).exists() {
            return;
        }
        let next = segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| *n > self.checkpoint.segment)
            .unwrap_or(durable.segment);
        if next != self.checkpoint.segment {
            self.advance(Position {
                segment: next,
                offset: 0,
            });
        }
    }
}

fn load_checkpoint(dir: &Path) -> Position {
    fs::read(dir.join(CHECKPOINT))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_checkpoint(dir: &Path, at: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, serde_json::to_vec(&at).unwrap_or_default())?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dir.join(CHECKPOINT))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::wal::tests::{config, record, temp_dir};
    use super::super::WalConfig;
    use super::*;

    /// A sink in memory that fails on demand and can lose acknowledgements
    /// (the insert happens, the caller sees an error).
    #[derive(Default)]
    struct Memory {
        rows: Mutex<Vec<(String, UsageRecord)>>,
        down: std::sync::atomic::AtomicBool,
        lose_next_ack: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl UsageSink for Memory {
        async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError("down".into()));
            }
            let mut held = self.rows.lock().unwrap();
            held.extend(rows.iter().map(|r| (batch.to_string(), r.clone())));
            if self.lose_next_ack.swap(false, Ordering::SeqCst) {
                return Err(SinkError("timed out".into()));
            }
            Ok(())
        }

        async fn inserted(&self, batch: &str) -> Result<u64, SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError("down".into()));
            }
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .filter(|(b, _)| b == batch)
                .count() as u64)
        }
    }

    fn shipper_config() -> ShipperConfig {
        ShipperConfig {
            batch_rows: 7,
            batch_interval: Duration::from_millis(20),
            replica: "r".into(),
            max_backoff: Duration::from_millis(50),
        }
    }

    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn every_record_arrives_once_through_outages_and_lost_acknowledgements() {
        let dir = temp_dir("ship");
        let wal = Arc::new(
            Wal::open(WalConfig {
                segment_bytes: 1500,
                ..config(&dir)
            })
            .unwrap(),
        );
        let sink = Arc::new(Memory::default());
        let shipping = tokio::spawn({
            let (wal, sink) = (wal.clone(), sink.clone());
            async move { wal.ship(sink, shipper_config()).await }
        });
        for n in 0..40 {
            wal.append(record(n)).unwrap();
        }
        until(|| sink.rows.lock().unwrap().len() == 40).await;
        sink.down.store(true, Ordering::SeqCst);
        for n in 40..80 {
            wal.append(record(n)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(wal.stats().backlog_bytes > 0);
        sink.lose_next_ack.store(true, Ordering::SeqCst);
        sink.down.store(false, Ordering::SeqCst);
        until(|| sink.rows.lock().unwrap().len() >= 80).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ids: Vec<String> = sink
            .rows
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.request_id.clone())
            .collect();
        let expected: Vec<String> = (0..80).map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected, "each record exactly once, in order");
        until(|| wal.stats().backlog_bytes == 0).await;
        assert!(
            segments(&dir).unwrap().len() <= 2,
            "shipped segments are deleted"
        );
        shipping.abort();

        // A restart resumes from the checkpoint and ships only what is new.
        drop(wal);
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        wal.append(record(80)).unwrap();
        let shipping = tokio::spawn({
            let (wal, sink) = (wal.clone(), sink.clone());
            async move { wal.ship(sink, shipper_config()).await }
        });
        until(|| sink.rows.lock().unwrap().len() == 81).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.rows.lock().unwrap().len(), 81);
        shipping.abort();
        fs::remove_dir_all(&dir).unwrap();
    }
}
