//! Removes from `tools/list` results the tools the caller may not use, in
//! a JSON response (held whole, then rewritten) or an SSE stream (each
//! event rewritten as it completes, every other byte passed on as it came).

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The largest JSON answer held for rewriting; a larger one is replaced
/// by a JSON-RPC error rather than passed on unfiltered.
const JSON_LIMIT: usize = 16 << 20;
/// The largest SSE event held; a larger one is dropped for the same reason.
const EVENT_LIMIT: usize = 16 << 20;

/// A `tools/list` answer on its way to the client.
pub struct ToolsListFilter {
    /// The ids of the client's `tools/list` requests.
    ids: Vec<Value>,
    allowed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    event_stream: bool,
    pending: BytesMut,
    overflow: bool,
}

impl ToolsListFilter {
    pub fn new(
        ids: Vec<Value>,
        event_stream: bool,
        allowed: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            ids,
            allowed: Box::new(allowed),
            event_stream,
            pending: BytesMut::new(),
            overflow: false,
        }
    }

    /// Rewrites a chunk of the response body in place.
    pub fn observe(&mut self, body: &mut Option<Bytes>, end: bool) {
        let chunk = body.take().unwrap_or_default();
        *body = Some(if self.event_stream {
            self.events(&chunk, end)
        } else {
            self.whole(&chunk, end)
        });
    }

    fn whole(&mut self, chunk: &[u8], end: bool) -> Bytes {
        if self.pending.len() + chunk.len() > JSON_LIMIT {
            self.overflow = true;
            self.pending.clear();
        }
        if !self.overflow {
            self.pending.extend_from_slice(chunk);
        }
        if !end {
            return Bytes::new();
        }
        if self.overflow {
            return Bytes::from(too_large(self.ids.first()).to_string());
        }
        let held = std::mem::take(&mut self.pending).freeze();
        match serde_json::from_slice::<Value>(&held) {
            Ok(mut value) => {
                let changed = match &mut value {
                    // Every answer of a batch is filtered (no short cut).
                    Value::Array(items) => {
                        items
                            .iter_mut()
                            .map(|item| self.filter(item))
                            .filter(|changed| *changed)
                            .count()
                            > 0
                    }
                    one => self.filter(one),
                };
                if changed {
                    Bytes::from(value.to_string())
                } else {
                    held
                }
            }
            Err(_) => held,
        }
    }

    fn events(&mut self, chunk: &[u8], end: bool) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some((len, sep)) = event_end(&self.pending) {
            let event = self.pending.split_to(len + sep);
            out.extend_from_slice(&self.rewrite_event(&event[..len], &event[len..]));
        }
        if self.pending.len() > EVENT_LIMIT {
            tracing::warn!("an MCP server sent an SSE event over {EVENT_LIMIT} bytes; dropped");
            self.pending.clear();
        }
        if end {
            out.extend_from_slice(&std::mem::take(&mut self.pending));
        }
        out.freeze()
    }

    /// An event (without its blank line `sep`), filtered when its data is
    /// the answer to one of the `tools/list` requests.
    fn rewrite_event(&self, event: &[u8], sep: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(event) else {
            return [event, sep].concat();
        };
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let Ok(mut value) = serde_json::from_str::<Value>(&data.join("\n")) else {
            return [event, sep].concat();
        };
        if !self.filter(&mut value) {
            return [event, sep].concat();
        }
        let mut rewritten: String = text
            .lines()
            .filter(|l| !l.starts_with("data:"))
            .map(|l| format!("{l}\n"))
            .collect();
        rewritten.push_str(&format!("data: {value}\n\n"));
        rewritten.into_bytes()
    }

    /// Filters `result.tools` of a response to one of the ids; whether it
    /// changed anything.
    fn filter(&self, message: &mut Value) -> bool {
        let answers_list = message.get("id").is_some_and(|id| self.ids.contains(id));
        let Some(tools) = answers_list
            .then(|| message.pointer_mut("/result/tools"))
            .flatten()
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = tools.len();
        tools.retain(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(&self.allowed)
        });
        tools.len() != before
    }
}

/// Where the first complete event ends: its length and that of the blank
/// line after it.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn too_large(id: Option<&Value>) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": -32603, "message": format!("the tool list is larger than {JSON_LIMIT} bytes") }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(id: i64) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{"tools":[{"name":"echo"},{"name":"secret"}]}})
    }

    fn run(filter: &mut ToolsListFilter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(c));
            filter.observe(&mut body, i + 1 == chunks.len());
            out.extend_from_slice(&body.unwrap_or_default());
        }
        out
    }

    #[test]
    fn a_json_answer_keeps_only_allowed_tools_and_other_answers_pass_untouched() {
        let mut filter = ToolsListFilter::new(vec![json!(1)], false, |t| t == "echo");
        let body = list(1).to_string();
        let (a, b) = body.as_bytes().split_at(10);
        let out: Value = serde_json::from_slice(&run(&mut filter, &[a, b])).expect("json");
        assert_eq!(out["result"]["tools"], json!([{"name":"echo"}]));

        let mut other = ToolsListFilter::new(vec![json!(2)], false, |t| t == "echo");
        assert_eq!(run(&mut other, &[body.as_bytes()]), body.as_bytes());
    }

    #[test]
    fn an_event_stream_is_rewritten_event_by_event_across_chunks() {
        let mut filter = ToolsListFilter::new(vec![json!(1)], true, |t| t == "echo");
        let progress =
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
        let answer = format!("id: 9\nevent: message\ndata: {}\r\n\r\n", list(1));
        let stream = format!("{progress}{answer}");
        let bytes = stream.as_bytes();
        let out = String::from_utf8(run(
            &mut filter,
            &[&bytes[..30], &bytes[30..90], &bytes[90..]],
        ))
        .expect("utf-8");
        assert!(out.starts_with(progress), "{out}");
        assert!(out.contains("id: 9\nevent: message\ndata: "), "{out}");
        assert!(out.contains("echo") && !out.contains("secret"), "{out}");
        assert!(out.ends_with("\n\n"), "{out}");
    }
}
