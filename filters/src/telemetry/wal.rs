//! The write-ahead log: records are framed (`length`, `crc32`, JSON) and
//! appended to numbered segment files by one writer thread. Each group of
//! records is written as soon as it is taken from the queue; `fdatasync`
//! follows at once when someone waits for a record of the group (under
//! [`Durability::Disk`]), and otherwise within the sync interval, so one
//! sync covers many groups. A record counts as durable (shipped, counted)
//! only once synced; the data plane never waits for the disk except for an
//! intent it asked to wait for. A torn or corrupt frame (a crash during a
//! write) is detected by its length and checksum and never misread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::UsageRecord;

/// Frame header: payload length and CRC-32, little endian.
const HEADER: usize = 8;
/// No record comes near this; a larger length is a torn frame.
const MAX_RECORD: usize = 1 << 20;
/// Records one group commit takes from the queue at most.
const GROUP: usize = 4096;
/// Room for a few records: less than this left under the cap is pressure.
const HEADROOM: u64 = 4096;

/// Where and how much the log may write.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Records that would take the log's files past this are dropped.
    pub disk_cap_bytes: u64,
    /// Records waiting for the writer; when full, new ones are dropped.
    pub queue: usize,
    /// What a wait for a record ([`Wal::append_durable`]) waits for.
    pub durability: Durability,
    /// The longest a written record waits for its `fdatasync`.
    pub sync_interval: Duration,
}

/// What "on disk" means to someone waiting for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Synced with `fdatasync`: the record survives a crash of the machine.
    /// A waited record costs one sync, shared by the records of its group.
    #[default]
    Disk,
    /// Written to the file: the record survives the process dying in any
    /// way; a crash of the machine loses at most the last sync interval.
    Process,
}

/// A place in the log: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Why a record was not logged; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("the write-ahead log's queue is full")]
    QueueFull,
    #[error("the write-ahead log is at its disk cap")]
    DiskFull,
    #[error("the write-ahead log cannot write to its disk")]
    Io,
    #[error("the usage record cannot be encoded")]
    Unencodable,
}

impl Dropped {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::DiskFull => "disk_full",
            Dropped::Io => "io_error",
            Dropped::Unencodable => "unencodable",
        }
    }

    const ALL: [Dropped; 4] = [
        Dropped::QueueFull,
        Dropped::DiskFull,
        Dropped::Io,
        Dropped::Unencodable,
    ];
}

/// Counters for metrics and the admin API.
#[derive(Debug, Clone, Default)]
pub struct WalStats {
    /// Records made durable since start.
    pub durable: u64,
    /// Dropped records since start, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// Bytes on disk not yet shipped.
    pub backlog_bytes: u64,
    /// Records shipped since start.
    pub shipped: u64,
}

/// State shared by the data plane, the writer thread and the shipper.
#[derive(Debug, Default)]
pub(super) struct Counters {
    queued: AtomicUsize,
    /// Written records wait for their sync.
    unsynced: AtomicBool,
    durable: AtomicU64,
    dropped: [AtomicU64; 4],
    pub(super) disk_bytes: AtomicU64,
    pub(super) backlog_bytes: AtomicU64,
    pub(super) shipped: AtomicU64,
}

impl Counters {
    fn drop_record(&self, why: Dropped, n: u64) {
        let at = Dropped::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.dropped[at].fetch_add(n, Ordering::Relaxed);
    }
}

/// A record on its way to the writer, and who waits for it to be durable;
/// without a record, a request to sync now.
struct Entry {
    record: Option<UsageRecord>,
    durable: Option<oneshot::Sender<()>>,
}

/// Resolves once an appended record is on disk; an error when it was
/// dropped after all (a write failed).
pub struct Durable(oneshot::Receiver<()>);

impl Durable {
    pub async fn wait(self) -> bool {
        self.0.await.is_ok()
    }
}

/// The log's writing end; cheap to share.
pub struct Wal {
    /// Held while the log is open: one writer per directory.
    _lock: File,
    tx: SyncSender<Entry>,
    /// Where this process's records begin: everything before it was
    /// written by earlier runs.
    started_at: Position,
    log_id: String,
    config: WalConfig,
    pub(super) counters: Arc<Counters>,
    durable: watch::Receiver<Position>,
}

impl Wal {
    /// Opens the log in `config.dir` (created if missing) and starts the
    /// writer on a new segment after any left by an earlier run, so a torn
    /// tail stays in a sealed segment.
    pub fn open(config: WalConfig) -> io::Result<Wal> {
        fs::create_dir_all(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        let log_id = log_id(&config.dir)?;
        let segments = segments(&config.dir)?;
        let disk_bytes = segments
            .iter()
            .map(|(_, path)| fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .sum();
        let first = segments.last().map_or(0, |(n, _)| n + 1);
        let file = create_segment(&config.dir, first)?;
        let counters = Arc::new(Counters {
            disk_bytes: AtomicU64::new(disk_bytes),
            // Until a shipper reads its checkpoint, all of it may be unshipped.
            backlog_bytes: AtomicU64::new(disk_bytes),
            ..Counters::default()
        });
        let start = Position {
            segment: first,
            offset: 0,
        };
        let (durable_tx, durable) = watch::channel(start);
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let writer = Writer {
            rx,
            config: config.clone(),
            counters: counters.clone(),
            durable: durable_tx,
            file,
            at: start,
            unsynced: 0,
            waiting: Vec::new(),
            unsynced_since: None,
        };
        std::thread::Builder::new()
            .name("obleth-wal".into())
            .spawn(move || writer.run())?;
        Ok(Wal {
            _lock: lock,
            tx,
            started_at: start,
            log_id,
            config,
            counters,
            durable,
        })
    }

    /// Hands a record to the writer without waiting; a record that cannot
    /// be taken is dropped and counted.
    pub fn append(&self, record: UsageRecord) -> Result<(), Dropped> {
        self.send(Entry {
            record: Some(record),
            durable: None,
        })
    }

    /// Appends like [`Wal::append`], with a way to wait until the record is
    /// on disk.
    pub fn append_durable(&self, record: UsageRecord) -> Result<Durable, Dropped> {
        let (tx, rx) = oneshot::channel();
        self.send(Entry {
            record: Some(record),
            durable: Some(tx),
        })?;
        Ok(Durable(rx))
    }

    fn send(&self, entry: Entry) -> Result<(), Dropped> {
        if self.counters.disk_bytes.load(Ordering::Relaxed) >= self.config.disk_cap_bytes {
            self.counters.drop_record(Dropped::DiskFull, 1);
            return Err(Dropped::DiskFull);
        }
        // Counted before the writer can see it, so the count never dips
        // below zero.
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let dropped = match self.tx.try_send(entry) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => Dropped::QueueFull,
            Err(TrySendError::Disconnected(_)) => Dropped::Io,
        };
        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.counters.drop_record(dropped, 1);
        Err(dropped)
    }

    /// Whether a record appended now would be dropped: the queue or the
    /// disk cap is full.
    pub fn under_pressure(&self) -> bool {
        self.counters.queued.load(Ordering::Relaxed) >= self.config.queue
            || self.counters.disk_bytes.load(Ordering::Relaxed) + HEADROOM
                > self.config.disk_cap_bytes
    }

    /// Waits up to `limit` for every appended record to be durable (or
    /// dropped); used before the process exits.
    pub fn sync(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        // Counted like a record, so the wait below covers it; a full queue
        // is synced by the interval anyway.
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let flush = Entry {
            record: None,
            durable: None,
        };
        if self.tx.try_send(flush).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        }
        while self.counters.queued.load(Ordering::Relaxed) > 0
            || self.counters.unsynced.load(Ordering::Acquire)
        {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.counters;
        WalStats {
            durable: c.durable.load(Ordering::Relaxed),
            dropped: Dropped::ALL
                .iter()
                .zip(&c.dropped)
                .map(|(d, n)| (d.reason(), n.load(Ordering::Relaxed)))
                .collect(),
            disk_bytes: c.disk_bytes.load(Ordering::Relaxed),
            backlog_bytes: c.backlog_bytes.load(Ordering::Relaxed),
            shipped: c.shipped.load(Ordering::Relaxed),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Chosen when the log's directory was first used; distinguishes this
    /// log's positions from those of a log started afresh.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Follows the durable end of the log.
    pub fn durable(&self) -> watch::Receiver<Position> {
        self.durable.clone()
    }

    /// Where this process's records begin.
    pub fn started_at(&self) -> Position {
        self.started_at
    }
}

struct Writer {
    rx: Receiver<Entry>,
    config: WalConfig,
    counters: Arc<Counters>,
    durable: watch::Sender<Position>,
    file: File,
    /// The end of what was written to the current segment.
    at: Position,
    /// Records written but not yet synced, and who waits for their sync.
    unsynced: u64,
    waiting: Vec<oneshot::Sender<()>>,
    /// When the oldest unsynced record was written.
    unsynced_since: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::new();
        // Set after a failed write until a fresh segment could be started.
        let mut failing = false;
        loop {
            let first = match self.unsynced_since {
                None => self.rx.recv().ok(),
                Some(since) => {
                    let due = self.config.sync_interval.saturating_sub(since.elapsed());
                    match self.rx.recv_timeout(due) {
                        Ok(entry) => Some(entry),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            failing |= !self.sync();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                }
            };
            let Some(first) = first else {
                self.sync();
                return;
            };
            buf.clear();
            let mut taken = 0u64;
            let mut framed = 0u64;
            let mut waiting = Vec::new();
            let mut flush = false;
            let disk = self.counters.disk_bytes.load(Ordering::Relaxed);
            for Entry { record, durable } in
                std::iter::once(first).chain(self.rx.try_iter().take(GROUP))
            {
                taken += 1;
                let Some(record) = record else {
                    flush = true;
                    continue;
                };
                let frame = match encode(&record) {
                    Ok(frame) => frame,
                    Err(e) => {
                        tracing::error!(request_id = %record.request_id, "a usage record cannot be encoded and is dropped: {e}");
                        self.counters.drop_record(Dropped::Unencodable, 1);
                        continue;
                    }
                };
                if disk + (buf.len() + frame.len()) as u64 > self.config.disk_cap_bytes {
                    self.counters.drop_record(Dropped::DiskFull, 1);
                    continue;
                }
                buf.extend_from_slice(&frame);
                framed += 1;
                waiting.extend(durable);
            }
            if failing && self.rotate().is_ok() {
                tracing::warn!("the write-ahead log writes again");
                failing = false;
            }
            if !buf.is_empty() {
                if failing {
                    self.counters.drop_record(Dropped::Io, framed);
                } else if let Err(e) = self.write(&buf) {
                    tracing::error!(dir = %self.config.dir.display(), "the write-ahead log cannot write; records are dropped: {e}");
                    self.counters.drop_record(Dropped::Io, framed);
                    // Cut what may have reached the file, keep what was
                    // written before if it can still be synced, and go on in
                    // a new segment; until one can be started, records are
                    // dropped.
                    let _ = self.file.set_len(self.at.offset);
                    self.sync();
                    failing = self.rotate().is_err();
                } else {
                    self.unsynced += framed;
                    self.counters.unsynced.store(true, Ordering::Release);
                    self.unsynced_since.get_or_insert_with(Instant::now);
                    match self.config.durability {
                        Durability::Disk => self.waiting.append(&mut waiting),
                        Durability::Process => release(waiting),
                    }
                }
            }
            self.counters
                .queued
                .fetch_sub(taken as usize, Ordering::Relaxed);
            let due = self
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= self.config.sync_interval);
            if flush || !self.waiting.is_empty() || due {
                failing |= !self.sync();
            }
            if !failing && self.at.offset >= self.config.segment_bytes {
                failing |= !self.sync();
                if let Err(e) = self.rotate() {
                    tracing::error!("cannot start a new write-ahead log segment: {e}");
                    failing = true;
                }
            }
        }
    }

    /// Appends `buf` to the current segment, without syncing it.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.at.offset += buf.len() as u64;
        self.counters
            .disk_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.counters
            .backlog_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs what was written, tells who waits for it and publishes the
    /// new durable end; false when the sync failed, and what it covered is
    /// counted as dropped (the disk cannot say which of it survived).
    fn sync(&mut self) -> bool {
        if self.unsynced_since.is_none() {
            return true;
        }
        let records = std::mem::take(&mut self.unsynced);
        let waiting = std::mem::take(&mut self.waiting);
        self.unsynced_since = None;
        match self.file.sync_data() {
            Ok(()) => {
                self.counters.durable.fetch_add(records, Ordering::Relaxed);
                self.durable.send_replace(self.at);
                release(waiting);
                self.counters.unsynced.store(false, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), "the write-ahead log cannot sync; {records} records are counted as dropped: {e}");
                self.counters.drop_record(Dropped::Io, records);
                self.counters.unsynced.store(false, Ordering::Release);
                false
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.at.segment + 1;
        self.file = create_segment(&self.config.dir, next)?;
        self.at = Position {
            segment: next,
            offset: 0,
        };
        self.durable.send_replace(self.at);
        Ok(())
    }
}

/// Tells each waiter its record is durable.
fn release(waiting: Vec<oneshot::Sender<()>>) {
    for waiter in waiting {
        let _ = waiter.send(());
    }
}

fn encode(record: &UsageRecord) -> serde_json::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record)?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Takes the directory's lock, so two processes given one `wal_path` (a
/// shared volume under `docker compose --scale`) cannot both write segments
/// and checkpoints into it: the second is refused, naming the holder.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "the usage log {} is in use by process {}; give each replica its own telemetry.wal_path",
                    dir.display(),
                    holder.trim()
                ),
            ))
        }
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The id kept in `dir/id`, created on first use.
fn log_id(dir: &Path) -> io::Result<String> {
    let path = dir.join("id");
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!(
        "{:x}",
        crc32fast::hash(&nanos.to_le_bytes()) ^ std::process::id()
    );
    fs::write(&path, &id)?;
    File::open(&path)?.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(id)
}

pub(super) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.wal"))
}

fn create_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The segments in `dir`, oldest first.
pub(super) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_suffix(".wal")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub(super) struct SegmentRead {
    /// Records with the offset just past each.
    pub records: Vec<(UsageRecord, u64)>,
    /// Where a torn or corrupt frame starts, if one was met.
    pub torn_at: Option<u64>,
}

/// Reads up to `max` records of `path` from `from` until `until` (the
/// durable end) or the end of the file.
pub(super) fn read_segment(
    path: &Path,
    from: u64,
    until: Option<u64>,
    max: usize,
) -> io::Result<SegmentRead> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    match until {
        Some(end) => {
            file.take(end.saturating_sub(from))
                .read_to_end(&mut bytes)?;
        }
        None => {
            file.read_to_end(&mut bytes)?;
        }
    }
    Ok(decode_segment(&bytes, from, max, path))
}

/// Decodes up to `max` frames of `bytes`, which start at offset `from` of
/// the segment at `path` (named when a record is skipped).
fn decode_segment(bytes: &[u8], from: u64, max: usize, path: &Path) -> SegmentRead {
    let mut read = SegmentRead::default();
    let mut at = 0usize;
    while read.records.len() < max && at < bytes.len() {
        let torn = |read: &mut SegmentRead| read.torn_at = Some(from + at as u64);
        let Some(header) = bytes.get(at..at + HEADER) else {
            torn(&mut read);
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload = bytes.get(at + HEADER..at + HEADER + len);
        let Some(payload) =
            payload.filter(|p| len > 0 && len <= MAX_RECORD && crc32fast::hash(p) == crc)
        else {
            torn(&mut read);
            break;
        };
        let next = at + HEADER + len;
        match serde_json::from_slice(payload) {
            Ok(record) => read.records.push((record, from + next as u64)),
            Err(e) => tracing::error!(
                path = %path.display(),
                offset = from + at as u64,
                "skipping an unreadable usage record: {e}"
            ),
        }
        at = next;
    }
    read
}

/// The frames of `bytes` as `read_segment` decodes them (records with the
/// offset just past each, and where a torn frame starts), for the fuzzer.
#[doc(hidden)]
pub fn decode_frames(bytes: &[u8]) -> (Vec<(UsageRecord, u64)>, Option<u64>) {
    let read = decode_segment(bytes, 0, usize::MAX, Path::new("<bytes>"));
    (read.records, read.torn_at)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn record(n: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{n}"),
            record_id: format!("rec-{n}"),
            time_ms: 1_700_000_000_000 + n,
            tenant: "t".into(),
            key: "k".into(),
            model: "m".into(),
            route: "llm".into(),
            admission: "fast".into(),
            queue_wait_ms: 0,
            ttfb_ms: 5,
            total_ms: 9,
            status: 200,
            input_tokens: 10,
            output_tokens: n,
            estimated: false,
            cost_usd: 0.5,
            upstream: "u".into(),
            replica: "r".into(),
            outcome: super::super::Outcome::Completed,
            mcp: None,
        }
    }

    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "obleth-wal-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    pub fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            disk_cap_bytes: 1 << 30,
            queue: 1000,
            durability: Durability::Disk,
            sync_interval: Duration::from_millis(5),
        }
    }

    /// A log in a fresh directory for the test `name`, with the default
    /// test configuration changed by `adjust`.
    fn wal_with(name: &str, adjust: impl FnOnce(&mut WalConfig)) -> (PathBuf, Wal) {
        let dir = temp_dir(name);
        let mut config = config(&dir);
        adjust(&mut config);
        (dir, Wal::open(config).unwrap())
    }

    fn all_records(dir: &Path) -> Vec<UsageRecord> {
        segments(dir)
            .unwrap()
            .iter()
            .flat_map(|(_, p)| read_segment(p, 0, None, usize::MAX).unwrap().records)
            .map(|(r, _)| r)
            .collect()
    }

    #[test]
    fn records_are_durable_in_order_across_segments() {
        let (dir, wal) = wal_with("order", |c| c.segment_bytes = 2000);
        for n in 0..100 {
            wal.append(record(n)).unwrap();
            if n % 10 == 9 {
                // Rotation happens between group commits.
                assert!(wal.sync(Duration::from_secs(5)));
            }
        }
        assert_eq!(wal.stats().durable, 100);
        let read = all_records(&dir);
        assert_eq!(read, (0..100).map(record).collect::<Vec<_>>());
        assert!(segments(&dir).unwrap().len() > 3, "rotated by size");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unwaited_records_share_a_sync_within_the_interval_and_a_waited_one_syncs_at_once() {
        let (dir, wal) = wal_with("interval", |c| c.sync_interval = Duration::from_millis(300));
        let written = Instant::now();
        wal.append(record(0)).unwrap();
        wal.append(record(1)).unwrap();
        while wal.stats().durable < 2 {
            assert!(written.elapsed() < Duration::from_secs(5), "never synced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            written.elapsed() >= Duration::from_millis(200),
            "synced after {:?}, before the interval",
            written.elapsed()
        );
        fs::remove_dir_all(&dir).unwrap();

        let (dir, wal) = wal_with("waited", |c| c.sync_interval = Duration::from_secs(600));
        wal.append(record(2)).unwrap();
        let waited = wal.append_durable(record(3)).unwrap();
        let told = tokio::time::timeout(Duration::from_secs(5), waited.wait()).await;
        assert_eq!(
            told,
            Ok(true),
            "a waited record does not wait for the interval"
        );
        assert_eq!(wal.stats().durable, 2, "synced, with the record before it");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn under_process_durability_a_waiter_is_told_once_written_and_the_sync_follows() {
        let (dir, wal) = wal_with("process", |c| {
            c.durability = Durability::Process;
            c.sync_interval = Duration::from_secs(600);
        });
        let waited = wal.append_durable(record(0)).unwrap();
        let told = tokio::time::timeout(Duration::from_secs(5), waited.wait()).await;
        assert_eq!(told, Ok(true));
        assert_eq!(all_records(&dir), vec![record(0)], "in the file");
        assert_eq!(wal.stats().durable, 0, "not yet synced");
        assert!(
            wal.sync(Duration::from_secs(5)),
            "a sync is asked for at exit"
        );
        assert_eq!(wal.stats().durable, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_detected_and_never_misread() {
        let dir = temp_dir("torn");
        {
            let wal = Wal::open(config(&dir)).unwrap();
            for n in 0..3 {
                wal.append(record(n)).unwrap();
            }
            assert!(wal.sync(Duration::from_secs(5)));
        }
        let (_, path) = segments(&dir).unwrap().remove(0);
        let full = fs::metadata(&path).unwrap().len();
        // A crash in the middle of the third record's write.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 7).unwrap();
        let read = read_segment(&path, 0, None, usize::MAX).unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.torn_at, Some(read.records[1].1));
        // Garbage in place of a frame is refused by its checksum.
        let mut bytes = fs::read(&path).unwrap();
        let second = read.records[0].1 as usize;
        bytes[second + HEADER + 3] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let read = read_segment(&path, 0, None, usize::MAX).unwrap();
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.torn_at, Some(second as u64));
        // A restarted log writes a new segment and leaves the old one be.
        let wal = Wal::open(config(&dir)).unwrap();
        wal.append(record(9)).unwrap();
        assert!(wal.sync(Duration::from_secs(5)));
        assert_eq!(segments(&dir).unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_disk_cap_drops_and_counts_instead_of_failing() {
        let (dir, wal) = wal_with("cap", |c| c.disk_cap_bytes = 2000);
        let mut refused = 0;
        for n in 0..100 {
            if wal.append(record(n)).is_err() {
                refused += 1;
            }
        }
        assert!(wal.sync(Duration::from_secs(5)));
        let stats = wal.stats();
        let dropped: u64 = stats.dropped.iter().map(|(_, n)| n).sum();
        assert!(stats.disk_bytes <= 2000, "{stats:?}");
        assert_eq!(
            stats.durable + dropped,
            100,
            "{stats:?} ({refused} refused at once)"
        );
        assert!(dropped > 50, "{stats:?}");
        assert!(wal.under_pressure());
        assert_eq!(all_records(&dir).len() as u64, stats.durable);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_writer_of_one_directory_is_refused_naming_the_holder() {
        let dir = temp_dir("lock");
        let first = Wal::open(config(&dir)).expect("first writer");
        let err = Wal::open(config(&dir))
            .err()
            .expect("second writer refused");
        let message = err.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        drop(first);
        assert!(Wal::open(config(&dir)).is_ok(), "free again once closed");
        let _ = fs::remove_dir_all(&dir);
    }
}
