//! The shipper: reads the write-ahead log from a persisted checkpoint and
//! inserts it into a sink (ClickHouse) in batches bounded by size and time.
//! The checkpoint advances only after the sink acknowledged a batch, and
//! fully shipped segments are deleted. Every batch has an id derived from
//! where it starts; after a failure or a restart the sink is asked how many
//! rows of that batch it already holds, so a batch that went through just
//! before the error (a timeout, a crash) is never inserted twice. A batch
//! that is retried is sent with exactly the rows it had (across a restart
//! too, when the sink deduplicates retries): a replicated ClickHouse then
//! recognises a block a vanished replica took by its hash, even where the
//! replica asked has not fetched it yet.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::wal::{read_segment, segment_path, segments, Counters, Position};
use super::{Outcome, UsageRecord, Wal};

/// Where usage records go.
#[async_trait]
pub trait UsageSink: Send + Sync {
    /// Inserts `rows` as batch `batch`, all or nothing.
    async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError>;
    /// How many rows of `batch` (whose rows are `rows`) the sink already
    /// holds.
    async fn inserted(&self, batch: &str, rows: &[UsageRecord]) -> Result<u64, SinkError>;
    /// Whether inserting rows the sink already holds, sent again exactly
    /// as before, is recognised and skipped (replicated ClickHouse tables
    /// keep recent blocks' hashes in ZooKeeper). Then a batch of which
    /// only a part is visible yet is sent again whole instead of being
    /// split.
    fn deduplicates_retries(&self) -> bool {
        false
    }
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
        let saved = load_checkpoint(&dir);
        let mut shipper = Shipper {
            checkpoint: saved.at,
            open: saved
                .open
                .into_iter()
                .map(|o| (o.record.record_id.clone(), o))
                .collect(),
            started_at: self.started_at(),
            log_id: self.log_id().to_string(),
            skip: 0,
            pending: None,
            sending: saved.sending.map(|end| (saved.at, end)),
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

impl Wal {
    /// Tokens and USD micros of the records not shipped yet whose `by`
    /// (`tenant` or `key`) is `id`, since `since_ms`: what the ledger in
    /// ClickHouse does not hold yet. Records of a batch inserted but not
    /// yet checkpointed count in both (at most one batch): restored spend
    /// errs towards charging, never towards forgetting. Blocking file reads.
    pub fn unshipped_spend(&self, by: &str, id: &str, since_ms: u64) -> io::Result<(u64, u64)> {
        let saved = load_checkpoint(self.dir());
        let from = saved.at;
        let durable = *self.durable().borrow();
        let (mut tokens, mut usd) = (0u64, 0f64);
        // Intents read before the checkpoint whose completion was not seen:
        // shipped later as completed or crashed rows, at their reservation
        // until then.
        for o in &saved.open {
            let r = &o.record;
            let owner = if by == "key" { &r.key } else { &r.tenant };
            if owner == id && r.time_ms >= since_ms {
                tokens += r.input_tokens + r.output_tokens;
                usd += r.cost_usd;
            }
        }
        for (segment, path) in segments(self.dir())? {
            if segment < from.segment || segment > durable.segment {
                continue;
            }
            let start = if segment == from.segment {
                from.offset
            } else {
                0
            };
            let until = (segment == durable.segment).then_some(durable.offset);
            let read = match read_segment(&path, start, until, usize::MAX) {
                Ok(read) => read,
                // Shipped and deleted meanwhile: the ledger has it now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for (r, _) in read.records {
                if r.outcome == Outcome::Intent {
                    continue;
                }
                let owner = if by == "key" { &r.key } else { &r.tenant };
                if owner == id && r.time_ms >= since_ms {
                    tokens += r.input_tokens + r.output_tokens;
                    usd += r.cost_usd;
                }
            }
        }
        Ok((tokens, (usd * 1e6).round().max(0.0) as u64))
    }
}

/// What one step of the shipper did.
enum Step {
    /// Shipped a batch or moved past a finished segment.
    Progressed,
    /// Waited for records or for a partial batch to fill.
    Waited,
}

struct Shipper {
    dir: PathBuf,
    sink: Arc<dyn UsageSink>,
    config: ShipperConfig,
    counters: Arc<Counters>,
    durable: watch::Receiver<Position>,
    checkpoint: Position,
    /// Intents behind the checkpoint whose completion was not read yet, by
    /// record id; saved with the checkpoint.
    open: HashMap<String, OpenIntent>,
    /// Where this process's records begin: open intents from before it
    /// will never complete.
    started_at: Position,
    /// Names this log in batch ids, so a log started afresh never reuses
    /// an id an earlier log's batches have.
    log_id: String,
    /// Ask the sink what it holds before the next insert (after a start
    /// or a failure, when the last batch may have gone through unseen).
    verify: bool,
    /// Records the sink is known to hold beyond what was read (an earlier
    /// batch was larger than `batch_rows` is now); moved past unsent.
    skip: usize,
    /// The batch last sent and not acknowledged: the next attempt sends
    /// exactly these entries again (not a fresh, longer read), so a sink
    /// that took it unseen — a replica that went away after the insert —
    /// gets a block identical to the one it holds.
    pending: Option<Pending>,
    /// Where the batch in flight when the last run ended stopped, from the
    /// checkpoint (saved before inserting when the sink deduplicates
    /// retries): the first batch after a restart is read up to there, no
    /// further, so it is that batch again, row for row.
    sending: Option<(Position, u64)>,
}

/// A batch in flight: where it starts and what it holds.
struct Pending {
    at: Position,
    entries: Vec<(UsageRecord, u64)>,
}

/// File work (reads, fsyncs, deletes) runs off the async workers: the
/// runtime it shares also serves the request path's Redis calls.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

impl Shipper {
    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut last_warning: Option<Instant> = None;
        let mut waiting_since: Option<Instant> = None;
        loop {
            let durable = *self.durable.borrow_and_update();
            let step = self.step(durable, &mut waiting_since).await;
            match step {
                // Only shipping proves the sink is back: waiting for records
                // or for a batch to fill keeps the backoff and the warning.
                Ok(Step::Waited) => {}
                Ok(Step::Progressed) => {
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

    /// Ships one batch, moves past a finished segment, or waits for more.
    async fn step(
        &mut self,
        durable: Position,
        waiting_since: &mut Option<Instant>,
    ) -> Result<Step, SinkError> {
        self.skip_missing_segments(durable).await?;
        if self.checkpoint >= self.started_at && self.open.values().any(|o| self.orphaned(o)) {
            self.ship_crashed().await?;
            return Ok(Step::Progressed);
        }
        let retry = self
            .pending
            .as_ref()
            .filter(|p| p.at == self.checkpoint)
            .map(|p| p.entries.clone());
        if let Some(entries) = retry {
            self.ship(&entries).await?;
            return Ok(Step::Progressed);
        }
        let mut until = (self.checkpoint.segment == durable.segment).then_some(durable.offset);
        let resumed = self
            .sending
            .take()
            .filter(|(at, end)| *at == self.checkpoint && *end > at.offset)
            .map(|(_, end)| end);
        let mut max = self.config.batch_rows;
        if let Some(end) = resumed {
            until = Some(until.map_or(end, |u| u.min(end)));
            max = usize::MAX;
        }
        let path = segment_path(&self.dir, self.checkpoint.segment);
        let from = self.checkpoint.offset;
        let read = match blocking(move || read_segment(&path, from, until, max)).await {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(SinkError(format!("cannot read the write-ahead log: {e}"))),
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
                })
                .await?;
                return Ok(Step::Progressed);
            }
            *waiting_since = None;
            let _ = self.durable.changed().await;
            return Ok(Step::Waited);
        }
        if resumed.is_some() {
            // The last run's batch in flight: again, exactly, at once.
            self.pending = Some(Pending {
                at: self.checkpoint,
                entries: read.records.clone(),
            });
            *waiting_since = None;
            self.ship(&read.records).await?;
            return Ok(Step::Progressed);
        }
        // A partial batch waits out batch_interval (once: not re-read on
        // every commit meanwhile); a full one goes at once.
        let full = read.records.len() >= self.config.batch_rows || sealed;
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let rest = self.config.batch_interval.saturating_sub(since.elapsed());
        if !full && !rest.is_zero() {
            tokio::time::sleep(rest).await;
            return Ok(Step::Waited);
        }
        *waiting_since = None;
        self.ship(&read.records).await?;
        Ok(Step::Progressed)
    }

    /// Inserts one batch and moves the checkpoint past it. After a start
    /// or a failure it first asks the sink how many of the batch's records
    /// it holds (an insert whose acknowledgement was lost), and moves past
    /// those without inserting them again.
    async fn ship(&mut self, entries: &[(UsageRecord, u64)]) -> Result<(), SinkError> {
        let batch = format!(
            "{}:{}:{}:{}",
            self.config.replica, self.log_id, self.checkpoint.segment, self.checkpoint.offset
        );
        // Intents are not rows; each row keeps the place just past it.
        let (rows, ends): (Vec<UsageRecord>, Vec<u64>) = entries
            .iter()
            .filter(|(r, _)| r.outcome != Outcome::Intent)
            .cloned()
            .unzip();
        let last = entries
            .last()
            .map_or(self.checkpoint.offset, |(_, end)| *end);
        if rows.is_empty() {
            return self.consume(entries, last).await;
        }
        if self.verify || self.skip > 0 {
            let held = match self.skip {
                0 => self.sink.inserted(&batch, &rows).await? as usize,
                skip => skip,
            };
            // Part of the batch sent before is visible, the rest perhaps
            // not yet (another replica's copy still replicating): the same
            // block again lets the sink drop what it holds.
            let resend_whole = held < rows.len()
                && self.sink.deduplicates_retries()
                && self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.at == self.checkpoint);
            self.skip = held.saturating_sub(rows.len());
            let held = if resend_whole {
                0
            } else {
                held.min(rows.len())
            };
            if held > 0 {
                // Already in: move past them; what follows is a new batch,
                // checked the same way.
                self.counters
                    .shipped
                    .fetch_add(held as u64, Ordering::Relaxed);
                return self.consume(entries, ends[held - 1]).await;
            }
            self.verify = false;
        }
        let first_attempt = self
            .pending
            .as_ref()
            .is_none_or(|p| p.at != self.checkpoint);
        self.pending = Some(Pending {
            at: self.checkpoint,
            entries: entries.to_vec(),
        });
        if first_attempt && self.sink.deduplicates_retries() {
            // So that a restart sends this batch again unchanged.
            self.save_sending(last).await?;
        }
        self.sink.insert(&batch, &rows).await?;
        self.counters
            .shipped
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.consume(entries, last).await
    }

    /// Moves the checkpoint to `to` in the current segment, past the
    /// entries that end there or before: their intents stay open until
    /// their completion is read.
    async fn consume(&mut self, entries: &[(UsageRecord, u64)], to: u64) -> Result<(), SinkError> {
        self.pending = None;
        for (record, _) in entries.iter().filter(|(_, end)| *end <= to) {
            if record.outcome == Outcome::Intent {
                self.open.insert(
                    record.record_id.clone(),
                    OpenIntent {
                        segment: self.checkpoint.segment,
                        record: record.clone(),
                    },
                );
            } else {
                self.open.remove(&record.record_id);
            }
        }
        self.advance(Position {
            segment: self.checkpoint.segment,
            offset: to,
        })
        .await
    }

    /// Whether `intent` was written by a process that has ended.
    fn orphaned(&self, intent: &OpenIntent) -> bool {
        intent.segment < self.started_at.segment
    }

    /// Ships the intents of ended processes as `crashed` rows, once every
    /// record those processes wrote has been read (no completion can
    /// follow). One batch per segment the intents are in: that set never
    /// changes, so a batch that went in before a crash is recognised by its
    /// name and not inserted again, however many restarts it takes.
    async fn ship_crashed(&mut self) -> Result<(), SinkError> {
        let mut segments: Vec<u64> = self
            .open
            .values()
            .filter(|o| self.orphaned(o))
            .map(|o| o.segment)
            .collect();
        segments.sort_unstable();
        segments.dedup();
        for segment in segments {
            let mut rows: Vec<UsageRecord> = self
                .open
                .values()
                .filter(|o| o.segment == segment)
                .map(|o| UsageRecord {
                    outcome: Outcome::Crashed,
                    status: 0,
                    ..o.record.clone()
                })
                .collect();
            rows.sort_by(|a, b| a.record_id.cmp(&b.record_id));
            let batch = format!("{}:{}:crashed:{segment}", self.config.replica, self.log_id);
            if self.sink.inserted(&batch, &rows).await? == 0 {
                self.sink.insert(&batch, &rows).await?;
            }
            tracing::warn!(
                rows = rows.len(),
                "requests of an earlier run ended with its process; logged as crashed at their reservation"
            );
            self.counters
                .shipped
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.open.retain(|_, o| o.segment != segment);
            self.advance(self.checkpoint).await?;
        }
        Ok(())
    }

    /// Persists the checkpoint, then deletes segments wholly behind it. A
    /// checkpoint that cannot be saved stops shipping (retried), so the
    /// saved one never lags by more than the batch in flight.
    async fn advance(&mut self, to: Position) -> Result<(), SinkError> {
        let (dir, counters) = (self.dir.clone(), self.counters.clone());
        let saved = Checkpoint {
            at: to,
            open: self.open.values().cloned().collect(),
            sending: None,
        };
        blocking(move || {
            save_checkpoint(&dir, &saved)?;
            for (n, path) in segments(&dir)? {
                if n >= to.segment {
                    break;
                }
                let len = fs::metadata(&path).map_or(0, |m| m.len());
                match fs::remove_file(&path) {
                    Ok(()) => {
                        let _ = counters.disk_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                            Some(d.saturating_sub(len))
                        });
                    }
                    Err(e) => tracing::warn!(path = %path.display(), "cannot delete a shipped segment: {e}"),
                }
            }
            let disk = counters.disk_bytes.load(Ordering::Relaxed);
            counters
                .backlog_bytes
                .store(disk.saturating_sub(to.offset), Ordering::Relaxed);
            Ok(())
        })
        .await
        .map_err(|e| SinkError(format!("cannot save the shipping checkpoint: {e}")))?;
        self.checkpoint = to;
        Ok(())
    }

    /// Saves the checkpoint as it is, noting that the batch from it up to
    /// `end` is being sent.
    async fn save_sending(&mut self, end: u64) -> Result<(), SinkError> {
        let dir = self.dir.clone();
        let saved = Checkpoint {
            at: self.checkpoint,
            open: self.open.values().cloned().collect(),
            sending: Some(end),
        };
        blocking(move || save_checkpoint(&dir, &saved))
            .await
            .map_err(|e| SinkError(format!("cannot save the shipping checkpoint: {e}")))
    }

    /// Moves a checkpoint that names a segment no longer (or never) on disk
    /// to the oldest one that is.
    async fn skip_missing_segments(&mut self, durable: Position) -> Result<(), SinkError> {
        let (dir, at) = (self.dir.clone(), self.checkpoint.segment);
        let next = blocking(move || {
            if segment_path(&dir, at).exists() {
                return Ok(at);
            }
            Ok(segments(&dir)?
                .into_iter()
                .map(|(n, _)| n)
                .find(|n| *n > at)
                .unwrap_or(durable.segment.max(at)))
        })
        .await
        .map_err(|e| SinkError(format!("cannot list the write-ahead log: {e}")))?;
        if next != at {
            self.advance(Position {
                segment: next,
                offset: 0,
            })
            .await?;
        }
        Ok(())
    }
}

/// Where shipping stopped, and the intents it passed that are still open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    #[serde(flatten)]
    at: Position,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    open: Vec<OpenIntent>,
    /// The end (in `at`'s segment) of the batch being inserted when this
    /// was saved, if it has not been acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sending: Option<u64>,
}

/// An intent read before the checkpoint, and the segment it is in (which
/// tells whether the process that wrote it has ended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenIntent {
    segment: u64,
    record: UsageRecord,
}

/// Where shipping stopped; the log's start when nothing was shipped yet. An
/// unreadable checkpoint is reported and shipping starts over from the
/// oldest segment: rows carry their record id, so ClickHouse keeps one of
/// each, where guessing a later position could lose rows.
fn load_checkpoint(dir: &Path) -> Checkpoint {
    let path = dir.join(CHECKPOINT);
    let read = fs::read(&path).and_then(|bytes| {
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    });
    match read {
        Ok(at) => at,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Checkpoint::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), "the shipping checkpoint is unreadable; shipping again from the oldest segment: {e}");
            Checkpoint::default()
        }
    }
}

fn save_checkpoint(dir: &Path, at: &Checkpoint) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, serde_json::to_vec(at).map_err(io::Error::other)?)?;
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

    #[test]
    fn a_checkpoint_that_cannot_be_read_ships_again_from_the_start() {
        let dir = temp_dir("checkpoint");
        fs::create_dir_all(&dir).expect("dir");
        assert_eq!(load_checkpoint(&dir), Checkpoint::default(), "none yet");
        let at = Checkpoint {
            at: Position {
                segment: 3,
                offset: 120,
            },
            open: vec![OpenIntent {
                segment: 2,
                record: record(1),
            }],
            sending: Some(300),
        };
        save_checkpoint(&dir, &at).expect("saved");
        assert_eq!(load_checkpoint(&dir), at);
        // A checkpoint written before intents existed still reads.
        fs::write(dir.join(CHECKPOINT), br#"{"segment":4,"offset":8}"#).expect("written");
        assert_eq!(
            load_checkpoint(&dir).at,
            Position {
                segment: 4,
                offset: 8
            }
        );
        fs::write(dir.join(CHECKPOINT), b"{ torn").expect("written");
        assert_eq!(load_checkpoint(&dir), Checkpoint::default());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A sink in memory that fails on demand and can lose acknowledgements
    /// (the insert happens, the caller sees an error).
    #[derive(Default)]
    struct Memory {
        rows: Mutex<Vec<(String, UsageRecord)>>,
        down: std::sync::atomic::AtomicBool,
        lose_next_ack: std::sync::atomic::AtomicBool,
        /// Rows of the first batch asked about that an earlier run
        /// inserted (its acknowledgement lost in a crash).
        held_from_before: Mutex<Option<u64>>,
        /// Calls made while down.
        refused: std::sync::atomic::AtomicUsize,
        /// Answers lookups as a replica that has not fetched anything yet.
        lagging: std::sync::atomic::AtomicBool,
        /// Skips an insert identical to an earlier one (batch and rows), as
        /// replicated ClickHouse does by block hash.
        dedup: std::sync::atomic::AtomicBool,
        /// The request ids of every insert call, in order.
        calls: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl UsageSink for Memory {
        async fn insert(&self, batch: &str, rows: &[UsageRecord]) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(SinkError("down".into()));
            }
            let ids: Vec<String> = std::iter::once(batch.to_string())
                .chain(rows.iter().map(|r| r.request_id.clone()))
                .collect();
            let mut calls = self.calls.lock().unwrap();
            let seen = calls.contains(&ids);
            calls.push(ids);
            let mut held = self.rows.lock().unwrap();
            if !(seen && self.dedup.load(Ordering::SeqCst)) {
                held.extend(rows.iter().map(|r| (batch.to_string(), r.clone())));
            }
            if self.lose_next_ack.swap(false, Ordering::SeqCst) {
                return Err(SinkError("timed out".into()));
            }
            Ok(())
        }

        fn deduplicates_retries(&self) -> bool {
            self.deduplicating()
        }

        async fn inserted(&self, batch: &str, _rows: &[UsageRecord]) -> Result<u64, SinkError> {
            if self.down.load(Ordering::SeqCst) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(SinkError("down".into()));
            }
            if let Some(held) = self.held_from_before.lock().unwrap().take() {
                return Ok(held);
            }
            if self.lagging.load(Ordering::SeqCst) {
                return Ok(0);
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

    impl Memory {
        fn deduplicating(&self) -> bool {
            self.dedup.load(Ordering::SeqCst)
        }

        fn request_ids(&self) -> Vec<String> {
            let rows = self.rows.lock().unwrap();
            rows.iter().map(|(_, r)| r.request_id.clone()).collect()
        }
    }

    fn start_shipping(wal: &Arc<Wal>, sink: &Arc<Memory>) -> tokio::task::JoinHandle<()> {
        let (wal, sink) = (wal.clone(), sink.clone());
        tokio::spawn(async move { wal.ship(sink, shipper_config()).await })
    }

    fn shipper_config() -> ShipperConfig {
        ShipperConfig {
            batch_rows: 7,
            batch_interval: Duration::from_millis(20),
            replica: "r".into(),
            max_backoff: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn unshipped_spend_counts_what_the_ledger_does_not_hold_yet() {
        let dir = temp_dir("unshipped");
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        let sink = Arc::new(Memory::default());
        let shipping = start_shipping(&wal, &sink);
        for n in 0..7 {
            wal.append(record(n)).unwrap();
        }
        until(|| sink.rows.lock().unwrap().len() == 7).await;
        until(|| wal.stats().backlog_bytes == 0).await;
        sink.down.store(true, Ordering::SeqCst);
        for n in 7..10 {
            wal.append(record(n)).unwrap();
        }
        assert!(wal.sync(Duration::from_secs(5)));
        let tenant = record(0).tenant;
        let expected: u64 = (7..10)
            .map(|n| record(n).input_tokens + record(n).output_tokens)
            .sum();
        let (tokens, _) = wal.unshipped_spend("tenant", &tenant, 0).unwrap();
        assert_eq!(tokens, expected, "only the three not shipped");
        assert_eq!(
            wal.unshipped_spend("tenant", "someone-else", 0).unwrap(),
            (0, 0)
        );
        shipping.abort();
        let _ = shipping.await;
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_partial_batch_waiting_out_its_interval_does_not_reset_the_backoff() {
        let dir = temp_dir("backoff");
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        let sink = Arc::new(Memory::default());
        sink.down.store(true, Ordering::SeqCst);
        // A partial batch (fewer than batch_rows) against a sink that is
        // down: each retry must wait longer than the last, up to the cap.
        for n in 0..3 {
            wal.append(record(n)).unwrap();
        }
        let config = ShipperConfig {
            max_backoff: Duration::from_secs(10),
            ..shipper_config()
        };
        let shipping = {
            let (wal, sink) = (wal.clone(), sink.clone());
            tokio::spawn(async move { wal.ship(sink, config).await })
        };
        tokio::time::sleep(Duration::from_millis(1600)).await;
        // 100, 200, 400, 800 ms: at most five calls in 1.6 s. Reset on every
        // wait it would be one call per batch_interval plus 100 ms, a dozen.
        let calls = sink.refused.load(Ordering::SeqCst);
        assert!(
            (2..=5).contains(&calls),
            "{calls} calls to a sink that is down"
        );
        sink.down.store(false, Ordering::SeqCst);
        until(|| sink.rows.lock().unwrap().len() == 3).await;
        shipping.abort();
        let _ = shipping.await;
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn after_a_restart_what_the_sink_already_holds_is_not_sent_again() {
        let dir = temp_dir("held");
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        for n in 0..5 {
            wal.append(record(n)).unwrap();
        }
        assert!(wal.sync(Duration::from_secs(5)));
        let sink = Arc::new(Memory::default());
        *sink.held_from_before.lock().unwrap() = Some(3);
        let shipping = start_shipping(&wal, &sink);
        until(|| wal.stats().backlog_bytes == 0).await;
        let ids = sink.request_ids();
        assert_eq!(ids, ["req-3", "req-4"], "the first three were in already");
        assert_eq!(wal.stats().shipped, 5);
        shipping.abort();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A replica took a batch and went away before acknowledging it; the
    /// lookup goes to another replica that has not fetched it yet. The
    /// batch is sent again exactly as before — records logged meanwhile
    /// stay out of it — so the block hash recognises it and nothing is
    /// doubled.
    #[tokio::test]
    async fn a_batch_whose_acknowledgement_was_lost_is_sent_again_with_the_same_rows() {
        let dir = temp_dir("same-rows");
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        let sink = Arc::new(Memory::default());
        sink.lagging.store(true, Ordering::SeqCst);
        sink.dedup.store(true, Ordering::SeqCst);
        sink.lose_next_ack.store(true, Ordering::SeqCst);
        let shipping = start_shipping(&wal, &sink);
        for n in 0..3 {
            wal.append(record(n)).unwrap();
        }
        until(|| !sink.calls.lock().unwrap().is_empty()).await;
        for n in 3..5 {
            wal.append(record(n)).unwrap();
        }
        until(|| wal.stats().backlog_bytes == 0 && wal.stats().shipped == 5).await;
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(
            calls[0], calls[1],
            "the retry is the same batch, row for row"
        );
        let ids = sink.request_ids();
        let expected: Vec<String> = (0..5).map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected, "each record once");
        shipping.abort();
        let _ = shipping.await;
        let _ = fs::remove_dir_all(&dir);
    }

    /// As above, but the process ends before the retry: the batch in
    /// flight is noted in the checkpoint, and the restarted shipper sends
    /// it again row for row although the log holds more by then.
    #[tokio::test]
    async fn after_a_restart_the_batch_in_flight_is_sent_again_with_the_same_rows() {
        let dir = temp_dir("same-rows-restart");
        let sink = Arc::new(Memory::default());
        sink.lagging.store(true, Ordering::SeqCst);
        sink.dedup.store(true, Ordering::SeqCst);
        sink.lose_next_ack.store(true, Ordering::SeqCst);
        {
            let wal = Arc::new(Wal::open(config(&dir)).unwrap());
            let shipping = start_shipping(&wal, &sink);
            for n in 0..3 {
                wal.append(record(n)).unwrap();
            }
            until(|| !sink.calls.lock().unwrap().is_empty()).await;
            sink.down.store(true, Ordering::SeqCst);
            for n in 3..5 {
                wal.append(record(n)).unwrap();
            }
            assert!(wal.sync(Duration::from_secs(5)));
            shipping.abort();
            let _ = shipping.await;
        }
        assert!(
            load_checkpoint(&dir).sending.is_some(),
            "the batch in flight is noted"
        );
        sink.down.store(false, Ordering::SeqCst);
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        let shipping = start_shipping(&wal, &sink);
        until(|| sink.rows.lock().unwrap().len() >= 5 && wal.stats().backlog_bytes == 0).await;
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(
            calls[0], calls[1],
            "the retry is the same batch, row for row"
        );
        let expected: Vec<String> = (0..5).map(|n| format!("req-{n}")).collect();
        assert_eq!(sink.request_ids(), expected, "each record once");
        assert_eq!(load_checkpoint(&dir).sending, None);
        shipping.abort();
        let _ = shipping.await;
        let _ = fs::remove_dir_all(&dir);
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
        let shipping = start_shipping(&wal, &sink);
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
        let ids = sink.request_ids();
        let expected: Vec<String> = (0..80).map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected, "each record exactly once, in order");
        until(|| wal.stats().backlog_bytes == 0).await;
        assert!(
            segments(&dir).unwrap().len() <= 2,
            "shipped segments are deleted"
        );
        shipping.abort();
        let _ = shipping.await;

        // A restart resumes from the checkpoint and ships only what is new
        // (the old log is closed first: one writer per directory).
        drop(wal);
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        wal.append(record(80)).unwrap();
        let shipping = start_shipping(&wal, &sink);
        until(|| sink.rows.lock().unwrap().len() == 81).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.rows.lock().unwrap().len(), 81);
        shipping.abort();
        fs::remove_dir_all(&dir).unwrap();
    }

    fn intent(n: u64) -> UsageRecord {
        UsageRecord {
            outcome: Outcome::Intent,
            mcp: None,
            status: 0,
            ..record(n)
        }
    }

    fn outcomes(sink: &Memory) -> Vec<(String, Outcome)> {
        let mut rows: Vec<_> = sink
            .rows
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| (r.request_id.clone(), r.outcome))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    #[tokio::test]
    async fn an_intent_is_superseded_by_its_completion_and_a_dead_runs_intent_ships_as_crashed() {
        let dir = temp_dir("intents");
        let sink = Arc::new(Memory::default());
        {
            let wal = Arc::new(Wal::open(config(&dir)).unwrap());
            let shipping = start_shipping(&wal, &sink);
            // 1 completes; 2 completes after a batch went out between its
            // intent and its completion; 3 is cut off by the "crash".
            wal.append(intent(1)).unwrap();
            wal.append(intent(2)).unwrap();
            wal.append(record(1)).unwrap();
            until(|| sink.rows.lock().unwrap().len() == 1).await;
            wal.append(intent(3)).unwrap();
            wal.append(record(2)).unwrap();
            until(|| sink.rows.lock().unwrap().len() == 2).await;
            until(|| wal.stats().backlog_bytes == 0).await;
            shipping.abort();
            let _ = shipping.await;
        }
        assert_eq!(
            outcomes(&sink),
            [
                ("req-1".into(), Outcome::Completed),
                ("req-2".into(), Outcome::Completed)
            ],
            "intents are never rows while their run lives"
        );
        for _restart in 0..2 {
            let wal = Arc::new(Wal::open(config(&dir)).unwrap());
            let shipping = start_shipping(&wal, &sink);
            until(|| sink.rows.lock().unwrap().len() >= 3).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            shipping.abort();
            let _ = shipping.await;
        }
        let rows = outcomes(&sink);
        assert_eq!(
            rows,
            [
                ("req-1".into(), Outcome::Completed),
                ("req-2".into(), Outcome::Completed),
                ("req-3".into(), Outcome::Crashed)
            ],
            "one crashed row, however often the process restarts"
        );
        let crashed = sink.rows.lock().unwrap()[2].1.clone();
        assert_eq!(
            (crashed.input_tokens, crashed.output_tokens),
            (intent(3).input_tokens, intent(3).output_tokens),
            "billed at the reservation"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_open_intent_survives_a_restart_in_the_checkpoint_until_its_completion_is_read() {
        let dir = temp_dir("open-intent");
        let sink = Arc::new(Memory::default());
        {
            let wal = Arc::new(Wal::open(config(&dir)).unwrap());
            let shipping = start_shipping(&wal, &sink);
            wal.append(intent(5)).unwrap();
            wal.append(record(4)).unwrap();
            until(|| sink.rows.lock().unwrap().len() == 1).await;
            until(|| wal.stats().backlog_bytes == 0).await;
            shipping.abort();
            let _ = shipping.await;
            // The completion is logged after the checkpoint passed the
            // intent, but not shipped before the process ends.
            wal.append(record(5)).unwrap();
            assert!(wal.sync(Duration::from_secs(5)));
        }
        let saved = load_checkpoint(&dir);
        assert_eq!(saved.open.len(), 1, "the intent is kept in the checkpoint");
        let wal = Arc::new(Wal::open(config(&dir)).unwrap());
        let shipping = start_shipping(&wal, &sink);
        until(|| sink.rows.lock().unwrap().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            outcomes(&sink),
            [
                ("req-4".into(), Outcome::Completed),
                ("req-5".into(), Outcome::Completed)
            ]
        );
        assert!(load_checkpoint(&dir).open.is_empty());
        shipping.abort();
        let _ = shipping.await;
        let _ = fs::remove_dir_all(&dir);
    }
}
