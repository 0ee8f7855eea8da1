//! Token usage as the upstream reports it, read from a JSON response or an
//! SSE stream as the bytes pass through, and the removal of the usage-only
//! stream event obleth asked for on the client's behalf.

use serde_json::Value;

/// Tokens a request consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// Both counts; the upstream chooses them, so the sum saturates.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// The `usage` of a response body or stream event: chat and completions
    /// name its fields `prompt_tokens`/`completion_tokens`, the Responses API
    /// `input_tokens`/`output_tokens`, and its stream carries it in the
    /// `response` of the `response.completed` event.
    fn from_json(v: &Value) -> Option<Usage> {
        // Streams with include_usage carry `"usage": null` on every chunk.
        let u = v
            .get("usage")
            .or_else(|| v.pointer("/response/usage"))
            .filter(|u| u.is_object())?;
        let count = |a: &str, b: &str| {
            u.get(a)
                .or_else(|| u.get(b))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Some(Usage {
            prompt_tokens: count("prompt_tokens", "input_tokens"),
            completion_tokens: count("completion_tokens", "output_tokens"),
        })
    }
}

/// Most bytes of a non-streamed response kept to find its `usage`.
const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// The most of one stream event held back: a usage event is a few hundred
/// bytes, so a longer one is passed on as it comes, unread.
const EVENT_LIMIT: usize = 1024 * 1024;

/// Watches a response body go by and reports the usage in it.
#[derive(Debug)]
pub struct UsageMeter {
    kind: BodyKind,
    /// Bytes of an unfinished JSON body or SSE event.
    pending: Vec<u8>,
    usage: Option<Usage>,
    /// Content deltas seen in a stream, the fallback when no usage arrives.
    streamed_chunks: u64,
    /// Drop the usage-only event (the client did not ask for it).
    strip_usage_event: bool,
    /// Inside an event longer than [`EVENT_LIMIT`], passed on unread until
    /// it ends; holds its last bytes, where the blank line ending it may
    /// begin.
    oversized: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    EventStream,
}

impl UsageMeter {
    /// `event_stream`: the response is `text/event-stream`;
    /// `strip_usage_event`: remove the final `choices: []` usage event.
    pub fn new(event_stream: bool, strip_usage_event: bool) -> Self {
        Self {
            kind: if event_stream {
                BodyKind::EventStream
            } else {
                BodyKind::Json
            },
            pending: Vec::new(),
            usage: None,
            streamed_chunks: 0,
            strip_usage_event: strip_usage_event && event_stream,
            oversized: None,
        }
    }

    /// Reported usage, if the upstream sent it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Content chunks seen in a stream (each usually one token).
    pub fn streamed_chunks(&self) -> u64 {
        self.streamed_chunks
    }

    /// Observes `chunk`; returns the bytes to send to the client instead of
    /// it when an event had to be removed (`None`: send it unchanged).
    pub fn observe(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        match self.kind {
            BodyKind::Json => {
                if self.pending.len() + chunk.len() <= JSON_LIMIT {
                    self.pending.extend_from_slice(chunk);
                }
                if end {
                    /// Only `usage` is read; serde skips the rest.
                    #[derive(serde::Deserialize)]
                    struct WithUsage {
                        usage: Option<Counts>,
                    }
                    #[derive(serde::Deserialize)]
                    struct Counts {
                        /// `input_tokens` in the Responses API.
                        #[serde(default, alias = "input_tokens")]
                        prompt_tokens: u64,
                        #[serde(default, alias = "output_tokens")]
                        completion_tokens: u64,
                    }
                    if let Ok(WithUsage { usage: Some(c) }) = serde_json::from_slice(&self.pending)
                    {
                        self.usage = Some(Usage {
                            prompt_tokens: c.prompt_tokens,
                            completion_tokens: c.completion_tokens,
                        });
                    }
                    self.pending = Vec::new();
                }
                None
            }
            BodyKind::EventStream => self.observe_events(chunk, end),
        }
    }

    fn observe_events(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = chunk;
        if let Some(tail) = self.oversized.take() {
            let mut probe = tail;
            let seen = probe.len();
            probe.extend_from_slice(chunk);
            match event_len(&probe) {
                Some(len) => {
                    let (rest_of_event, after) = chunk.split_at(len - seen);
                    out.extend_from_slice(rest_of_event);
                    chunk = after;
                }
                None => {
                    out.extend_from_slice(chunk);
                    self.oversized = Some(probe.split_off(probe.len().saturating_sub(3)));
                    return self.strip_usage_event.then_some(out);
                }
            }
        }
        self.pending.extend_from_slice(chunk);
        let mut removed = false;
        let mut consumed = 0;
        let pending = std::mem::take(&mut self.pending);
        while let Some(len) = event_len(&pending[consumed..]) {
            let event = &pending[consumed..consumed + len];
            consumed += len;
            if self.inspect_event(event) {
                removed = true;
            } else {
                out.extend_from_slice(event);
            }
        }
        self.pending = pending;
        let rest = self.pending.split_off(consumed);
        self.pending = rest;
        if self.pending.len() > EVENT_LIMIT && !end {
            let held = std::mem::take(&mut self.pending);
            self.oversized = Some(held[held.len() - 3..].to_vec());
            out.extend_from_slice(&held);
        }
        if end && !self.pending.is_empty() {
            let tail = std::mem::take(&mut self.pending);
            if self.inspect_event(&tail) {
                removed = true;
            } else {
                out.extend_from_slice(&tail);
            }
        }
        // Without stripping the bytes pass exactly as they came; with it,
        // complete events pass and a partial one waits for its end.
        (self.strip_usage_event || removed).then_some(out)
    }

    /// Reads one event; true when it is the usage-only event to remove.
    fn inspect_event(&mut self, event: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(event) else {
            return false;
        };
        let mut usage_only = false;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" || !data.starts_with('{') {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(u) = Usage::from_json(&v) {
                self.usage = Some(u);
            }
            let choices = v.get("choices").and_then(Value::as_array);
            match choices {
                Some(c) if c.is_empty() => {
                    usage_only = v.get("usage").is_some_and(|u| !u.is_null())
                }
                Some(c) => {
                    let has_content = c.iter().any(|choice| {
                        choice
                            .pointer("/delta/content")
                            .or_else(|| choice.get("text"))
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                    });
                    if has_content {
                        self.streamed_chunks += 1;
                    }
                }
                None => {
                    let delta =
                        v.get("type").and_then(Value::as_str) == Some("response.output_text.delta");
                    if delta
                        && v.get("delta")
                            .and_then(Value::as_str)
                            .is_some_and(|d| !d.is_empty())
                    {
                        self.streamed_chunks += 1;
                    }
                }
            }
        }
        usage_only && self.strip_usage_event
    }
}

/// Length of the first complete SSE event (through its blank line).
fn event_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some(i + 2);
        }
        if i + 3 < buf.len() && &buf[i..i + 4] == b"\r\n\r\n" {
            return Some(i + 4);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_too_long_to_be_usage_passes_unread_and_metering_goes_on() {
        let huge = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(3 * EVENT_LIMIT)
        );
        let stream = format!("{huge}{STREAM}");
        for strip in [false, true] {
            let mut meter = UsageMeter::new(true, strip);
            let mut sent = Vec::new();
            let bytes = stream.as_bytes();
            // 16 KiB chunks, one cut inside the huge event's blank line.
            let cuts: Vec<usize> = (0..bytes.len())
                .step_by(16 * 1024)
                .chain([huge.len() - 1])
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .chain([bytes.len()])
                .collect();
            for pair in cuts.windows(2) {
                let piece = &bytes[pair[0]..pair[1]];
                let end = pair[1] == bytes.len();
                match meter.observe(piece, end) {
                    Some(replaced) => sent.extend_from_slice(&replaced),
                    None => sent.extend_from_slice(piece),
                }
                assert!(meter.pending.len() <= EVENT_LIMIT + 16 * 1024);
            }
            assert_eq!(meter.usage().map(|u| u.total()), Some(9), "strip={strip}");
            let sent = String::from_utf8(sent).expect("utf-8");
            assert!(sent.starts_with(&huge), "the long event passed whole");
            assert_eq!(sent.contains("\"usage\""), !strip, "strip={strip}");
        }
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );

    fn feed(meter: &mut UsageMeter, text: &str, piece: usize) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = bytes.chunks(piece).collect();
        for (i, c) in chunks.iter().enumerate() {
            match meter.observe(c, i + 1 == chunks.len()) {
                Some(replaced) => out.extend(replaced),
                None => out.extend_from_slice(c),
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn responses_usage_is_read_from_the_body_and_the_completed_event() {
        let mut meter = UsageMeter::new(false, false);
        feed(
            &mut meter,
            r#"{"object":"response","usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14}}"#,
            7,
        );
        assert_eq!(
            meter.usage(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9
            })
        );
        let mut meter = UsageMeter::new(true, false);
        let stream = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi \"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
        assert_eq!(feed(&mut meter, stream, 11), stream, "bytes pass unchanged");
        assert_eq!(
            meter.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1
            })
        );
        assert_eq!(meter.streamed_chunks(), 1);
    }

    #[test]
    fn json_body_usage_is_read_at_the_end() {
        let mut m = UsageMeter::new(false, false);
        let body =
            r#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        assert_eq!(feed(&mut m, body, 7), body);
        assert_eq!(
            m.usage(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 3
            })
        );
    }

    #[test]
    fn stream_usage_is_read_and_bytes_pass_unchanged() {
        for piece in [1, 5, 64, 10_000] {
            let mut m = UsageMeter::new(true, false);
            assert_eq!(feed(&mut m, STREAM, piece), STREAM, "piece {piece}");
            assert_eq!(m.usage().map(|u| u.total()), Some(9));
            assert_eq!(m.streamed_chunks(), 2);
        }
    }

    #[test]
    fn the_usage_event_is_stripped_leaving_everything_else_byte_identical() {
        let without: String = STREAM.replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
            "",
        );
        for piece in [1, 3, 17, 10_000] {
            let mut m = UsageMeter::new(true, true);
            assert_eq!(feed(&mut m, STREAM, piece), without, "piece {piece}");
            assert_eq!(m.usage().map(|u| u.completion_tokens), Some(2));
        }
    }

    #[test]
    fn a_total_beyond_u64_saturates_instead_of_overflowing() {
        // The upstream's numbers: u64::MAX + 1 panicked (overflow) in total().
        let body = r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#;
        let mut m = UsageMeter::new(false, false);
        feed(&mut m, body, 9);
        assert_eq!(m.usage().map(|u| u.total()), Some(u64::MAX));
    }

    #[test]
    fn null_usage_on_stream_chunks_is_not_usage() {
        let mut m = UsageMeter::new(true, false);
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n";
        feed(&mut m, text, 8);
        assert_eq!(m.usage(), None);
        assert_eq!(m.streamed_chunks(), 1);
    }

    #[test]
    fn a_stream_without_usage_counts_its_chunks() {
        let mut m = UsageMeter::new(true, true);
        let text = STREAM.replace("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n", "");
        assert_eq!(feed(&mut m, &text, 9), text);
        assert_eq!(m.usage(), None);
        assert_eq!(m.streamed_chunks(), 2);
    }
}
