//! `POST /v1/responses` (OpenAI's Responses API) and the endpoints the
//! mock only acknowledges (`/v1/rerank`, `/v1/score`,
//! `/v1/audio/transcriptions`), which report what they received.
//!
//! A response generates `max_output_tokens` (else 16) words `tok0 tok1 …`;
//! `input_tokens` counts the words of `input` (a string, or the `text`
//! of its messages' content). A stream sends `response.created`, one
//! `response.output_text.delta` per token, then `response.completed` with
//! the usage, as OpenAI does.

use std::iter;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{to_json, words, DEFAULT_MODEL};
use crate::faults::Chunk;
use crate::handler::Reply;

const DEFAULT_MAX_OUTPUT: u64 = 16;

fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => words(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item.get("content") {
                Some(Value::String(s)) => words(s),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .map(words)
                    .sum(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// `POST /v1/responses`, JSON or (with `stream: true`) SSE.
pub(super) fn responses(body: &[u8], seq: u64) -> Result<Reply, String> {
    let request: Value = super::parse(body)?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
        .to_string();
    let input = input_tokens(request.get("input").unwrap_or(&Value::Null));
    let output = request
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_OUTPUT)
        .min(4096);
    let text: String = (0..output).map(|i| format!("tok{i} ")).collect();
    let id = format!("resp_mock{seq}");
    let usage =
        json!({ "input_tokens": input, "output_tokens": output, "total_tokens": input + output });
    let completed = json!({
        "id": id, "object": "response", "status": "completed", "model": model,
        "output": [{ "type": "message", "role": "assistant",
                     "content": [{ "type": "output_text", "text": text.trim_end() }] }],
        "usage": usage,
    });
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Ok(Reply::json(StatusCode::OK, to_json(&completed)));
    }
    let event =
        |kind: &str, data: Value| -> Bytes { format!("event: {kind}\ndata: {data}\n\n").into() };
    let created = event(
        "response.created",
        json!({ "type": "response.created", "response": { "id": id, "status": "in_progress" } }),
    );
    let deltas: Vec<Bytes> = (0..output)
        .map(|i| {
            event(
                "response.output_text.delta",
                json!({ "type": "response.output_text.delta", "delta": format!("tok{i} ") }),
            )
        })
        .collect();
    let done = event(
        "response.completed",
        json!({ "type": "response.completed", "response": completed }),
    );
    Ok(Reply::events(Box::new(
        iter::once(Chunk::unpaced(created))
            .chain(deltas.into_iter().map(Chunk::paced))
            .chain(iter::once(Chunk::unpaced(done))),
    )))
}

/// An endpoint the mock does not model: it answers what it received (the
/// body's length and FNV-1a digest, and its content type), with a `usage`
/// of `total_tokens` only when `report_usage`, as vLLM's rerank does.
pub(super) fn acknowledge(
    path: &str,
    body: &[u8],
    content_type: &str,
    report_usage: bool,
) -> Reply {
    let mut answer = json!({
        "object": "mock.acknowledgement",
        "path": path,
        "received_bytes": body.len(),
        "received_fnv1a": format!("{:016x}", super::fnv1a(body)),
        "content_type": content_type,
    });
    if report_usage {
        answer["usage"] = json!({ "prompt_tokens": 7, "total_tokens": 7 });
    }
    Reply::json(StatusCode::OK, to_json(&answer))
}
