//! Ships finished spans to the collector: a bounded queue the request path
//! hands spans to without waiting, drained by one task that batches them
//! into OTLP/HTTP protobuf requests. A slow or dead collector fills the
//! queue, and what does not fit is dropped and counted; nothing else of the
//! request path notices.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::otlp::{self, KeyValue, Span};
use crate::config::TracingSettings;
use crate::metrics::FAMILIES;

/// The request path's handle on the export queue.
pub struct Exporter {
    queue: mpsc::Sender<Vec<Span>>,
}

impl Exporter {
    /// Starts the export task on the current runtime.
    pub fn start(settings: &TracingSettings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()?;
        let (queue, spans) = mpsc::channel(settings.queue);
        let task = Export {
            client,
            url: settings.endpoint.clone(),
            resource: resource(&settings.service_name),
            batch_spans: settings.batch_spans,
            batch_interval: settings.batch_interval,
            failing: false,
        };
        crate::supervision::spawn("trace export", task.run(spans));
        Ok(Self { queue })
    }

    #[cfg(test)]
    pub(super) fn from_queue(queue: mpsc::Sender<Vec<Span>>) -> Self {
        Self { queue }
    }

    /// Queues the spans of one request, or drops them when the queue is full.
    pub fn submit(&self, spans: Vec<Span>) {
        if let Err(e) = self.queue.try_send(spans) {
            let (reason, spans) = match e {
                mpsc::error::TrySendError::Full(s) => ("queue_full", s),
                mpsc::error::TrySendError::Closed(s) => ("stopped", s),
            };
            dropped(reason, spans.len());
        }
    }
}

fn dropped(reason: &str, spans: usize) {
    FAMILIES
        .trace_spans_dropped
        .with_label_values(&[reason])
        .inc_by(spans as u64);
}

/// Who the spans come from: `service.*` and `host.name`.
fn resource(service_name: &str) -> Vec<KeyValue> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    vec![
        KeyValue::text("service.name", service_name),
        KeyValue::text("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::text("service.instance.id", host.clone()),
        KeyValue::text("host.name", host),
    ]
}

struct Export {
    client: reqwest::Client,
    url: String,
    resource: Vec<KeyValue>,
    batch_spans: usize,
    batch_interval: Duration,
    /// Whether the last export failed: failures and recovery are logged
    /// once per change, not per batch.
    failing: bool,
}

impl Export {
    async fn run(mut self, mut queue: mpsc::Receiver<Vec<Span>>) {
        while let Some(mut batch) = queue.recv().await {
            let deadline = Instant::now() + self.batch_interval;
            while batch.len() < self.batch_spans {
                match timeout_at(deadline, queue.recv()).await {
                    Ok(Some(more)) => batch.extend(more),
                    Ok(None) | Err(_) => break,
                }
            }
            self.send(batch).await;
        }
    }

    async fn send(&mut self, batch: Vec<Span>) {
        let spans = batch.len();
        let body = otlp::encode(&self.resource, batch);
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match sent {
            Ok(_) => {
                FAMILIES.trace_spans_exported.inc_by(spans as u64);
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!(collector = %self.url, "trace export recovered");
                }
            }
            Err(e) => {
                dropped("export_failed", spans);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(collector = %self.url, "cannot export traces ({e}); dropping spans until the collector answers");
                }
            }
        }
    }
}
