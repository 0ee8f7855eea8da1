//! Background tasks that must not die unnoticed. A task started here that
//! panics is logged, counted in `obleth_background_failures_total{service}`
//! and turns `/readyz` to 503 naming the service, so a dead health checker
//! or usage shipper shows up on every dashboard instead of failing silently.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::metrics::FAMILIES;

/// Services whose task died, in the order they failed.
static FAILED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Where the process is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// The listeners do not accept connections yet.
    Starting = 0,
    /// The listeners take traffic.
    Serving = 1,
    /// SIGTERM arrived: no new connections; requests in flight finish.
    Draining = 2,
    /// SIGQUIT arrived: the listening sockets go to a new process (`obleth
    /// run --upgrade`); requests are still served, then this one drains.
    HandingOver = 3,
}

static PHASE: AtomicU8 = AtomicU8::new(Phase::Starting as u8);

/// Client connections a listener is serving (see [`OpenConnection`]).
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Counts a client connection from accept to close, so a drain waits for
/// one accepted but not yet read: its request is not in flight yet, and
/// exiting under it would reset the client.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn new() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client connections open right now.
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::Relaxed)
}

/// Dependencies the configuration requires that are not reachable yet.
static WAITING: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Moves the process to `phase` (serving once the listeners accept,
/// draining when SIGTERM arrives).
pub fn set_phase(phase: Phase) {
    PHASE.store(phase as u8, Ordering::Relaxed);
}

/// Whether the process is on its way out (draining, or handing over to a
/// new binary): every response then closes its connection, so clients move
/// to new connections instead of sending into one about to be dropped.
pub fn closing_connections() -> bool {
    PHASE.load(Ordering::Relaxed) >= Phase::Draining as u8
}

/// Says whether a required dependency (the store, say) is reachable; while
/// one is not, `/readyz` answers 503 naming it.
pub fn set_reachable(dependency: &'static str, reachable: bool) {
    let mut waiting = WAITING.lock().unwrap_or_else(|p| p.into_inner());
    waiting.retain(|d| *d != dependency);
    if !reachable {
        waiting.push(dependency);
    }
}

/// What `/readyz` answers: ready, or why not.
pub fn readiness() -> Result<(), String> {
    let failed = failures();
    if !failed.is_empty() {
        return Err(format!("background task died: {}", failed.join(", ")));
    }
    match PHASE.load(Ordering::Relaxed) {
        p if p == Phase::Draining as u8 => return Err("draining".into()),
        p if p == Phase::HandingOver as u8 => return Err("handing over to a new process".into()),
        p if p == Phase::Starting as u8 => return Err("starting".into()),
        _ => {}
    }
    let waiting = WAITING.lock().unwrap_or_else(|p| p.into_inner());
    if !waiting.is_empty() {
        return Err(format!("waiting for {}", waiting.join(", ")));
    }
    Ok(())
}

/// Runs `task` on the current Tokio runtime under supervision.
pub fn spawn<F>(service: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // The failure counter of every supervised service exists from the start.
    FAMILIES.background_failures.with_label_values(&[service]);
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic".into());
                failed(service, &message);
            }
        }
    });
}

/// Records that `service` died of `reason`.
pub fn failed(service: &'static str, reason: &str) {
    tracing::error!(
        service,
        "background task died: {reason}; /readyz reports not ready"
    );
    FAMILIES
        .background_failures
        .with_label_values(&[service])
        .inc();
    let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if !failed.contains(&service) {
        failed.push(service);
    }
}

/// The services that have died since start-up.
pub fn failures() -> Vec<&'static str> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_recorded() {
        spawn("test panicker", async { panic!("period must be non-zero") });
        spawn("test finisher", async {});
        for _ in 0..100 {
            if failures().contains(&"test panicker") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(failures().contains(&"test panicker"));
        assert!(!failures().contains(&"test finisher"));
        assert!(
            FAMILIES
                .background_failures
                .with_label_values(&["test panicker"])
                .get()
                >= 1
        );
    }
}
