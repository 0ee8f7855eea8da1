//! Background tasks that must not die unnoticed. A task started here that
//! panics is logged, counted in `obleth_background_failures_total{service}`
//! and turns `/readyz` to 503 naming the service, so a dead health checker
//! or usage shipper shows up on every dashboard instead of failing silently.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::metrics::FAMILIES;

/// Services whose task died, in the order they failed.
static FAILED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// False before the listeners accept connections and once draining begins.
static ACCEPTING: AtomicBool = AtomicBool::new(false);

/// Says whether the listeners take traffic (set once they accept, cleared
/// when draining starts).
pub fn set_accepting(accepting: bool) {
    ACCEPTING.store(accepting, Ordering::Relaxed);
}

/// What `/readyz` answers: ready, or why not.
pub fn readiness() -> Result<(), String> {
    let failed = failures();
    if !failed.is_empty() {
        return Err(format!("background task died: {}", failed.join(", ")));
    }
    if !ACCEPTING.load(Ordering::Relaxed) {
        return Err("not accepting traffic (starting or draining)".into());
    }
    Ok(())
}

/// Runs `task` on the current Tokio runtime under supervision.
pub fn spawn<F>(service: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
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
