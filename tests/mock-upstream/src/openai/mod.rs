//! The OpenAI-compatible endpoints under `/v1`, with their wire types.
//!
//! Field names and shapes follow OpenAI's API exactly, so the gateway parses
//! what it would parse in production. The answers are deterministic:
//!
//! - `completion_tokens` is the request's `max_completion_tokens`, else
//!   `max_tokens`, else 16, capped at 4096; the generated text is that many
//!   words `tok0 tok1 …` and `finish_reason` is always `"length"`.
//! - `prompt_tokens` counts whitespace-separated words: for chat, the words
//!   of every message's content (a string, or the `text` of its `"text"`
//!   parts) plus 3 per message; for completions and embeddings, the words of
//!   each prompt/input string, or the length of a token-id array.
//! - A streamed answer has one event per token, paced by the server's
//!   tokens-per-second setting.

mod completions;
mod embeddings;
mod responses;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::handler::Reply;

/// The model answered with when a request names none, and the only model
/// `/v1/models` lists.
const DEFAULT_MODEL: &str = "mock-model";

/// Answers a request under `/v1`; `content_type` is the request's.
pub(crate) fn route(
    method: &Method,
    path: &str,
    body: &[u8],
    content_type: &str,
    seq: u64,
) -> Reply {
    let allowed = match path {
        "/v1/models" => Method::GET,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses" => {
            Method::POST
        }
        "/v1/rerank" | "/v1/score" | "/v1/audio/transcriptions" if *method == Method::POST => {
            return responses::acknowledge(
                path,
                body,
                content_type,
                path != "/v1/audio/transcriptions",
            )
        }
        _ => {
            return error_reply(
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} {path})"),
            )
        }
    };
    let is_allowed = *method == allowed || (allowed == Method::GET && *method == Method::HEAD);
    if !is_allowed {
        let message = format!("Invalid method {method} for {path}: use {allowed}");
        return Reply {
            allow: Some(if allowed == Method::GET {
                "GET, HEAD"
            } else {
                "POST"
            }),
            ..error_reply(StatusCode::METHOD_NOT_ALLOWED, message)
        };
    }
    let result = match path {
        "/v1/chat/completions" => parse(body).and_then(|request| completions::chat(request, seq)),
        "/v1/completions" => parse(body).and_then(|request| completions::completion(request, seq)),
        "/v1/embeddings" => parse(body).and_then(embeddings::embeddings),
        "/v1/responses" => responses::responses(body, seq),
        _ => Ok(models()),
    };
    result.unwrap_or_else(|message| error_reply(StatusCode::BAD_REQUEST, message))
}

/// An OpenAI-shaped error answer: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_reply(status: StatusCode, message: impl Into<String>) -> Reply {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            kind,
            param: None,
            code,
        },
    };
    Reply::json(status, to_json(&body))
}

/// Serializes a wire type; these contain only strings, numbers and
/// string-keyed maps, which always serialize.
pub(crate) fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("mock wire types always serialize")
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|err| format!("We could not parse the JSON body of your request: {err}"))
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// One server-sent event carrying `value` as JSON.
fn sse(value: &impl Serialize) -> Bytes {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&to_json(value));
    event.extend_from_slice(b"\n\n");
    event.into()
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

fn models() -> Reply {
    let list = serde_json::json!({
        "object": "list",
        "data": [{
            "id": DEFAULT_MODEL,
            "object": "model",
            "created": 0,
            "owned_by": "obleth-mock",
        }],
    });
    Reply::json(StatusCode::OK, to_json(&list))
}

/// One prompt or embedding input.
struct Input {
    tokens: u64,
    /// Seeds the input's deterministic embedding.
    seed: u64,
}

/// Splits a `prompt`/`input` value into its inputs: a string, an array of
/// strings, an array of token ids, or an array of token-id arrays.
fn inputs(value: &Value, field: &str) -> Result<Vec<Input>, String> {
    fn text(text: &str) -> Input {
        Input {
            tokens: words(text),
            seed: fnv1a(text.as_bytes()),
        }
    }
    fn token_ids(ids: &[Value]) -> Option<Input> {
        let mut bytes = Vec::with_capacity(ids.len() * 8);
        for id in ids {
            bytes.extend_from_slice(&id.as_u64()?.to_le_bytes());
        }
        Some(Input {
            tokens: ids.len() as u64,
            seed: fnv1a(&bytes),
        })
    }
    let invalid = || {
        format!("Invalid value for '{field}': expected a string, an array of strings, or an array of token ids")
    };
    match value {
        Value::String(string) => Ok(vec![text(string)]),
        Value::Array(items) if items.is_empty() => Err(format!("'{field}' must not be empty")),
        Value::Array(items) if items.iter().all(Value::is_number) => token_ids(items)
            .map(|input| vec![input])
            .ok_or_else(invalid),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(string) => Some(text(string)),
                Value::Array(ids) => token_ids(ids),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// FNV-1a: a stable hash (unlike std's), so embeddings never change.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_prompts_and_inputs() {
        let count = |json: &str| -> Result<Vec<u64>, String> {
            let value: Value = serde_json::from_str(json).unwrap();
            Ok(inputs(&value, "input")?.iter().map(|i| i.tokens).collect())
        };
        assert_eq!(count(r#""a b c""#), Ok(vec![3]));
        assert_eq!(count(r#"["a b", "c"]"#), Ok(vec![2, 1]));
        assert_eq!(count("[1, 2, 3, 4]"), Ok(vec![4]));
        assert_eq!(count("[[1, 2], [3]]"), Ok(vec![2, 1]));
        assert!(count("[1, -2]").is_err());
        assert!(count("[]").is_err());
        assert!(count(r#"{"a": 1}"#).is_err());
        assert!(count(r#"["a", 1]"#).is_err());
    }
}
