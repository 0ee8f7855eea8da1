//! The OpenAI wire format as the filters need it: the error body every LLM
//! route answers with, and the few request fields obleth acts on.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// `{"error":{"message","type","code"}}`, as the OpenAI API answers.
pub fn error_body(status: u16, code: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        code: &'a str,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "invalid_request_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    serde_json::to_vec(&Outer {
        error: Inner {
            message,
            kind,
            code,
        },
    })
    .unwrap_or_default()
}

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// `POST /v1/responses`, OpenAI's Responses API.
    Responses,
    /// Any other `POST` of an LLM route (`/v1/rerank`, `/v1/score`,
    /// `/v1/audio/transcriptions`, …): passed through with auth, admission
    /// and an estimated charge, settled at the usage it reports if any.
    Other,
    Models,
    /// `GET /v1/models/{id}`: one model (see [`Endpoint::model_id`]).
    Model,
}

impl Endpoint {
    /// The endpoint for `method` and `path` (the part after the route's
    /// prefix is not considered: paths are matched by their ending).
    pub fn from_request(method: &str, path: &str) -> Option<Endpoint> {
        let path = path.trim_end_matches('/');
        match method {
            "POST" if path.ends_with("/chat/completions") => Some(Endpoint::ChatCompletions),
            "POST" if path.ends_with("/completions") => Some(Endpoint::Completions),
            "POST" if path.ends_with("/embeddings") => Some(Endpoint::Embeddings),
            "POST" if path.ends_with("/responses") => Some(Endpoint::Responses),
            "POST" => Some(Endpoint::Other),
            "GET" if path.ends_with("/models") => Some(Endpoint::Models),
            "GET" if Self::model_id(path).is_some() => Some(Endpoint::Model),
            _ => None,
        }
    }

    /// The `{id}` of `…/models/{id}`; model ids may hold `/`
    /// (`meta-llama/Llama-3.1-8B`), so it is everything after `/models/`.
    pub fn model_id(path: &str) -> Option<&str> {
        let (_, id) = path.trim_end_matches('/').split_once("/models/")?;
        (!id.is_empty()).then_some(id)
    }
}

/// Why a request body was refused (400, or 404 for an unknown model).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is not a JSON object: {0}")]
    NotJson(String),
    #[error("you must provide a model parameter")]
    MissingModel,
    /// A field obleth budgets on has a value the upstream would read
    /// differently (a float, a string, a negative number): refusing it keeps
    /// the reservation and the upstream's reading the same.
    #[error("{field}: {value} is not {expected}")]
    InvalidField {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// A parsed LLM request body, kept as received so that what goes upstream is
/// the client's bytes with only the `model` value (and what obleth must add)
/// changed.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    body: Form,
    /// Bytes of the body as received.
    received_len: usize,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// Completions the upstream generates: the larger of `n` and `best_of`
    /// (1 when neither is given). Each may run up to `max_tokens`.
    pub choices: u64,
    /// `stream_options.include_usage` is `true`.
    asks_for_usage: bool,
}

/// A request body as obleth reads and rewrites it.
#[derive(Debug, Clone, PartialEq)]
enum Form {
    /// A JSON object as received: where the `model` value (quotes included)
    /// lies in it, and whether it has `stream_options`.
    Json {
        bytes: Bytes,
        model_at: Range<usize>,
        has_stream_options: bool,
    },
    /// A JSON object being edited as a whole (brownout's output cap).
    Object(Map<String, Value>),
    /// `multipart/form-data` (an audio upload): the bytes as received and
    /// where the `model` field's value lies in them.
    Multipart {
        bytes: Bytes,
        model_at: Range<usize>,
    },
}

/// The top-level fields obleth reads; the rest of the body is checked for
/// syntax but not copied.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<Value>,
    /// Present even when `null` (which `Option` alone would hide).
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    max_completion_tokens: Option<Value>,
    max_tokens: Option<Value>,
    max_output_tokens: Option<Value>,
    n: Option<Value>,
    best_of: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Any JSON value, read as strictly as `serde_json::Value` reads it (UTF-8,
/// escapes, number range, nesting limit) but not kept: what `IgnoredAny`
/// lets through (it skips strings and numbers unchecked) yet `Value` refuses.
struct Editable;

impl<'de> Deserialize<'de> for Editable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Editable)
    }
}

impl<'de> Visitor<'de> for Editable {
    type Value = Editable;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_unit<E>(self) -> Result<Editable, E> {
        Ok(Editable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Editable, A::Error> {
        while seq.next_element::<Editable>()?.is_some() {}
        Ok(Editable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Editable, A::Error> {
        while let Some(EditableKey(reserved)) = map.next_key()? {
            if reserved {
                // `Value` reads an object with this key as the JSON text in
                // its value (serde_json's `raw_value`), not as an object.
                return Err(de::Error::custom(format!(
                    "the key {RAW_VALUE_KEY:?} is reserved"
                )));
            }
            map.next_value::<Editable>()?;
        }
        Ok(Editable)
    }
}

const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// An object key; `true` when it is [`RAW_VALUE_KEY`].
struct EditableKey(bool);

impl<'de> Deserialize<'de> for EditableKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(EditableKey(false))
    }
}

impl<'de> Visitor<'de> for EditableKey {
    type Value = EditableKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<EditableKey, E> {
        Ok(EditableKey(key == RAW_VALUE_KEY))
    }
}

/// The field's value when it is present and not null: a whole number of at
/// least `min`, else the error naming the field.
fn whole_number(
    value: Option<&Value>,
    field: &'static str,
    min: u64,
) -> Result<Option<u64>, BodyError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= min => Ok(Some(n)),
            _ => Err(BodyError::InvalidField {
                field,
                value: v.to_string().chars().take(40).collect(),
                expected: if min == 0 {
                    "a non-negative integer"
                } else {
                    "a positive integer"
                },
            }),
        },
    }
}

impl LlmRequest {
    /// Parses a JSON request body.
    pub fn parse(body: impl Into<Bytes>) -> Result<LlmRequest, BodyError> {
        let bytes: Bytes = body.into();
        // A struct also deserializes from an array; only an object is a request.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(BodyError::NotJson("expected an object".into()));
        }
        let head: Head =
            serde_json::from_slice(&bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
        // `Head` skips the other fields leniently; brownout's cap and a
        // merged `stream_options` edit the body as a whole, so it must also
        // read as a `Value`, or the cap would silently not apply.
        serde_json::from_slice::<Editable>(&bytes)
            .map_err(|e| BodyError::NotJson(e.to_string()))?;
        let raw_model = head.model.ok_or(BodyError::MissingModel)?.get();
        let model = match serde_json::from_str::<Value>(raw_model) {
            Ok(Value::String(m)) if !m.is_empty() => m,
            _ => return Err(BodyError::MissingModel),
        };
        // The raw value borrows from `bytes`: its offset is its place.
        let start = raw_model.as_ptr() as usize - bytes.as_ptr() as usize;
        let model_at = start..start + raw_model.len();
        let max_completion_tokens = whole_number(
            head.max_completion_tokens.as_ref(),
            "max_completion_tokens",
            0,
        )?;
        let max_tokens = whole_number(head.max_tokens.as_ref(), "max_tokens", 0)?;
        let max_output_tokens =
            whole_number(head.max_output_tokens.as_ref(), "max_output_tokens", 0)?;
        let n = whole_number(head.n.as_ref(), "n", 1)?.unwrap_or(1);
        let best_of = whole_number(head.best_of.as_ref(), "best_of", 1)?.unwrap_or(1);
        let asks_for_usage = head
            .stream_options
            .and_then(|o| serde_json::from_str::<Value>(o.get()).ok())
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false);
        Ok(LlmRequest {
            received_len: bytes.len(),
            model,
            stream: head
                .stream
                .as_ref()
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_tokens: max_completion_tokens.or(max_tokens).or(max_output_tokens),
            choices: n.max(best_of),
            asks_for_usage,
            body: Form::Json {
                has_stream_options: head.stream_options.is_some(),
                bytes,
                model_at,
            },
        })
    }

    /// Parses a body of `content_type`: `multipart/form-data` by its
    /// `model` field, anything else as JSON.
    pub fn parse_as(
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> Result<LlmRequest, BodyError> {
        let bytes: Bytes = body.into();
        let Some(boundary) = content_type.and_then(multipart_boundary) else {
            return Self::parse(bytes);
        };
        let model_at = multipart_field(&bytes, boundary, "model").ok_or(BodyError::MissingModel)?;
        let model = std::str::from_utf8(&bytes[model_at.clone()])
            .map_err(|_| BodyError::MissingModel)?
            .to_string();
        if model.is_empty() {
            return Err(BodyError::MissingModel);
        }
        Ok(LlmRequest {
            received_len: bytes.len(),
            body: Form::Multipart { bytes, model_at },
            model,
            stream: false,
            max_tokens: None,
            choices: 1,
            asks_for_usage: false,
        })
    }

    /// Whether a streamed request asked for the final usage event itself.
    pub fn asks_for_usage(&self) -> bool {
        self.asks_for_usage
    }

    /// The body to send upstream: `model` replaced by `upstream_model`, and
    /// with `request_usage`, `stream_options.include_usage` set so a stream
    /// reports its usage. The client's bytes are kept as they are
    /// everywhere else (not re-serialized), and returned without a copy
    /// when nothing changes.
    pub fn into_upstream(self, upstream_model: &str, request_usage: bool) -> Bytes {
        let (bytes, model_at, literal, add_usage) = match self.body {
            Form::Multipart { bytes, model_at } => {
                (bytes, model_at, upstream_model.to_owned(), false)
            }
            Form::Json {
                bytes,
                model_at,
                has_stream_options,
            } => {
                if request_usage && has_stream_options {
                    // Merging into the client's object: edit it as a whole.
                    return match serde_json::from_slice(&bytes) {
                        Ok(body) => Self::object_upstream(body, upstream_model, request_usage),
                        Err(_) => bytes,
                    };
                }
                let literal = Value::String(upstream_model.into()).to_string();
                if !request_usage && bytes[model_at.clone()] == *literal.as_bytes() {
                    return bytes;
                }
                (bytes, model_at, literal, request_usage)
            }
            Form::Object(body) => {
                return Self::object_upstream(body, upstream_model, request_usage)
            }
        };
        const USAGE: &[u8] = br#""stream_options":{"include_usage":true},"#;
        let mut out = Vec::with_capacity(bytes.len() + literal.len() + USAGE.len());
        let mut copied = 0;
        if add_usage {
            // Right after the object's opening brace (the first byte that is
            // not whitespace); `model` follows, so the comma is right.
            let brace = bytes.iter().position(|b| *b == b'{').unwrap_or(0);
            out.extend_from_slice(&bytes[..=brace]);
            out.extend_from_slice(USAGE);
            copied = brace + 1;
        }
        out.extend_from_slice(&bytes[copied..model_at.start]);
        out.extend_from_slice(literal.as_bytes());
        out.extend_from_slice(&bytes[model_at.end..]);
        Bytes::from(out)
    }

    fn object_upstream(
        mut body: Map<String, Value>,
        upstream_model: &str,
        request_usage: bool,
    ) -> Bytes {
        body.insert("model".into(), Value::String(upstream_model.into()));
        if request_usage {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                // `null` (or nonsense) where the options go: replace it.
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Lowers the output limit to `cap` (brownout): each output limit that
    /// is present and larger is capped, and `absent_field` (the endpoint's
    /// name for it) is set when the request gave none. A form upload has no
    /// output limit to lower.
    pub fn cap_max_tokens(&mut self, cap: u64, absent_field: &str) {
        if let Form::Json { bytes, .. } = &self.body {
            match serde_json::from_slice(bytes) {
                Ok(object) => self.body = Form::Object(object),
                Err(_) => return,
            }
        }
        let Form::Object(body) = &mut self.body else {
            return;
        };
        let mut present = false;
        for field in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
            if let Some(v) = body.get_mut(field) {
                present = true;
                if v.as_u64().is_none_or(|n| n > cap) {
                    *v = Value::from(cap);
                }
            }
        }
        if !present {
            body.insert(absent_field.into(), Value::from(cap));
        }
        self.max_tokens = Some(self.max_tokens.map_or(cap, |n| n.min(cap)));
    }

    /// The most completion tokens the request can cause: `max_tokens` (or
    /// `default` when absent) for each generated choice.
    pub fn completion_bound(&self, default: u64) -> u64 {
        self.max_tokens
            .unwrap_or(default)
            .saturating_mul(self.choices)
    }

    /// Bytes of the request body: an upper bound of its prompt tokens for
    /// byte-level tokenizers, so reservations cover the worst case.
    pub fn prompt_bound(&self) -> u64 {
        self.received_len as u64
    }
}

/// The boundary of a `multipart/form-data` content type.
fn multipart_boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        name.eq_ignore_ascii_case("boundary")
            .then(|| value.trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}

/// Where the value of the form field `name` lies in a multipart body.
fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Option<Range<usize>> {
    let delimiter = format!("--{boundary}");
    let wanted = format!("name=\"{name}\"");
    let mut at = find(body, delimiter.as_bytes(), 0)?;
    loop {
        let part = at + delimiter.len();
        let head_end = find(body, b"\r\n\r\n", part)?;
        let value_start = head_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), value_start)?;
        let head = String::from_utf8_lossy(&body[part..head_end]);
        let names_field = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("content-disposition:") && l.contains(&wanted)
        });
        if names_field {
            return Some(value_start..next);
        }
        at = next + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Result<LlmRequest, BodyError> {
        LlmRequest::parse(Bytes::copy_from_slice(body))
    }

    #[test]
    fn the_body_goes_upstream_as_received_with_only_the_model_changed() {
        let body = Bytes::from_static(
            br#" { "z": 1, "model" : "gpt", "messages": [{"content":"caf\u00e9"}], "a": 2.50 }"#,
        );
        let same = LlmRequest::parse(body.clone())
            .unwrap()
            .into_upstream("gpt", false);
        assert_eq!(same.as_ptr(), body.as_ptr(), "unchanged: no copy");
        let renamed = LlmRequest::parse(body.clone())
            .unwrap()
            .into_upstream("meta/llama\"3\"", false);
        assert_eq!(
            renamed,
            &br#" { "z": 1, "model" : "meta/llama\"3\"", "messages": [{"content":"caf\u00e9"}], "a": 2.50 }"#[..]
        );
        let usage = LlmRequest::parse(body).unwrap().into_upstream("gpt", true);
        let v: Value = serde_json::from_slice(&usage).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["a"], 2.5);
    }

    #[test]
    fn existing_stream_options_are_merged_not_duplicated() {
        for body in [
            &br#"{"model":"m","stream_options":null}"#[..],
            br#"{"model":"m","stream_options":{"include_usage":false,"x":1}}"#,
        ] {
            let up = parse(body).unwrap().into_upstream("m", true);
            let text = std::str::from_utf8(&up).unwrap();
            assert_eq!(text.matches("stream_options").count(), 1, "{text}");
            let v: Value = serde_json::from_slice(&up).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{text}");
        }
    }

    #[test]
    fn a_duplicate_model_field_is_refused() {
        assert!(matches!(
            parse(br#"{"model":"cheap","model":"dear"}"#),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(parse(br#"["m"]"#), Err(BodyError::NotJson(_))));
        assert_eq!(parse(br#"{"model":7}"#), Err(BodyError::MissingModel));
    }

    #[test]
    fn error_body_has_the_openai_shape() {
        let v: Value =
            serde_json::from_slice(&error_body(401, "invalid_api_key", "bad key")).unwrap();
        assert_eq!(v["error"]["message"], "bad key");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }

    #[test]
    fn a_multipart_upload_is_routed_by_its_model_field_and_rewritten_in_place() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01model\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n";
        let r = LlmRequest::parse_as(
            Bytes::copy_from_slice(body),
            Some("multipart/form-data; boundary=XyZ"),
        )
        .unwrap();
        assert_eq!(r.model, "whisper");
        assert!(!r.stream);
        let out = r.into_upstream("openai/whisper-large-v3", true);
        let expected = String::from_utf8_lossy(body)
            .replace("\r\n\r\nwhisper\r\n", "\r\n\r\nopenai/whisper-large-v3\r\n");
        assert_eq!(String::from_utf8_lossy(&out), expected);
        let none =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--XyZ--\r\n";
        assert_eq!(
            LlmRequest::parse_as(
                Bytes::copy_from_slice(none),
                Some("multipart/form-data; boundary=XyZ")
            )
            .unwrap_err(),
            BodyError::MissingModel
        );
        assert!(LlmRequest::parse_as(
            Bytes::copy_from_slice(b"{\"model\":\"m\"}"),
            Some("application/json")
        )
        .is_ok());
    }

    #[test]
    fn endpoints_by_method_and_path() {
        for (method, path, endpoint) in [
            (
                "POST",
                "/v1/chat/completions",
                Some(Endpoint::ChatCompletions),
            ),
            ("POST", "/v1/completions", Some(Endpoint::Completions)),
            ("POST", "/openai/v1/embeddings/", Some(Endpoint::Embeddings)),
            ("GET", "/v1/models", Some(Endpoint::Models)),
            ("POST", "/v1/responses", Some(Endpoint::Responses)),
            ("POST", "/v1/rerank", Some(Endpoint::Other)),
            (
                "GET",
                "/v1/models/meta-llama/Llama-3",
                Some(Endpoint::Model),
            ),
            ("GET", "/v1/models/", Some(Endpoint::Models)),
            ("GET", "/v1/chat/completions", None),
        ] {
            assert_eq!(
                Endpoint::from_request(method, path),
                endpoint,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn parse_reads_model_stream_and_limits_and_rewrites_model() {
        let r = parse(br#"{"messages":[],"model":"gpt","stream":true,"max_tokens":7}"#).unwrap();
        assert_eq!(
            (r.model.as_str(), r.stream, r.max_tokens),
            ("gpt", true, Some(7))
        );
        let up: Value = serde_json::from_slice(&r.clone().into_upstream("llama-3", false)).unwrap();
        assert_eq!(up["model"], "llama-3");
        assert_eq!(up["max_tokens"], 7);
        assert!(up.get("stream_options").is_none());
        assert!(!r.asks_for_usage());
        let up: Value = serde_json::from_slice(&r.into_upstream("llama-3", true)).unwrap();
        assert_eq!(up["stream_options"]["include_usage"], true);
        assert_eq!(parse(br#"{"messages":[]}"#), Err(BodyError::MissingModel));
        assert!(matches!(parse(b"[1]"), Err(BodyError::NotJson(_))));
        assert!(matches!(parse(b"{"), Err(BodyError::NotJson(_))));
    }

    #[test]
    fn brownout_caps_the_output_limit_in_the_upstream_body() {
        let capped = |body: &[u8]| {
            let mut r = parse(body).unwrap();
            r.cap_max_tokens(256, "max_tokens");
            let limit = r.max_tokens;
            let up: Value = serde_json::from_slice(&r.into_upstream("m", false)).unwrap();
            (up, limit)
        };
        let (up, limit) = capped(br#"{"model":"m","max_tokens":4000}"#);
        assert_eq!((up["max_tokens"].as_u64(), limit), (Some(256), Some(256)));
        let (up, _) = capped(br#"{"model":"m","max_completion_tokens":900,"max_tokens":100}"#);
        assert_eq!(up["max_completion_tokens"], 256);
        assert_eq!(up["max_tokens"], 100, "a smaller limit stays");
        let (up, limit) = capped(br#"{"model":"m"}"#);
        assert_eq!((up["max_tokens"].as_u64(), limit), (Some(256), Some(256)));
        assert!(up.get("max_completion_tokens").is_none());
    }

    #[test]
    fn budgeted_fields_must_be_whole_numbers() {
        for body in [
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":"100"}"#,
            r#"{"model":"m","max_tokens":1e30}"#,
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m","max_completion_tokens":true}"#,
            r#"{"model":"m","n":0}"#,
            r#"{"model":"m","n":2.5}"#,
            r#"{"model":"m","best_of":"3"}"#,
        ] {
            let e = parse(body.as_bytes()).expect_err(body);
            assert!(matches!(e, BodyError::InvalidField { .. }), "{body}: {e}");
        }
        let r = parse(br#"{"model":"m","max_tokens":null,"n":null}"#).unwrap();
        assert_eq!((r.max_tokens, r.choices), (None, 1));
    }

    #[test]
    fn a_body_that_cannot_be_edited_whole_is_refused_not_left_uncapped() {
        // Found by fuzzing: bodies `Head` reads but `Value` does not, so
        // brownout's cap did nothing (max_output_tokens stayed 64 under a
        // cap of 2) and a merged `stream_options` kept the client's model.
        let deep = |n: usize| {
            format!(
                r#"{{"model":"m","max_tokens":64,"x":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let editable = |body: &[u8]| serde_json::from_slice::<Map<String, Value>>(body).is_ok();
        let limit = (1..1000).find(|n| !editable(deep(*n).as_bytes())).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"{\"model\":\"meta-llama/Llama-3.1-8B\",\"input\":\"hi\",\"max_output_tokens\":64,\"stream\":true,\"strEam_options\":{\"incl\xf7de_usaAe\":true}}".to_vec(),
            br#"{"model":"m","max_tokens":64,"x":1e400}"#.to_vec(),
            br#"{"model":"m","max_tokens":64,"x":"\ud800"}"#.to_vec(),
            br#"{"model":"m","max_tokens":64,"x":{"$serde_json::private::RawValue":"[1"}}"#.to_vec(),
            deep(limit).into_bytes(),
        ];
        for body in &cases {
            let text = String::from_utf8_lossy(body);
            assert!(!editable(body), "{text}");
            assert!(matches!(parse(body), Err(BodyError::NotJson(_))), "{text}");
        }
        let mut r = parse(deep(limit - 1).as_bytes()).expect("as deep as Value reads");
        r.cap_max_tokens(2, "max_tokens");
        assert_eq!(r.max_tokens, Some(2));
        let up: Value = serde_json::from_slice(&r.into_upstream("up", true)).unwrap();
        assert_eq!(
            (up["model"].as_str(), up["max_tokens"].as_u64()),
            (Some("up"), Some(2))
        );
    }

    #[test]
    fn every_choice_is_reserved_for() {
        let r = parse(br#"{"model":"m","max_tokens":10,"n":100}"#).unwrap();
        assert_eq!(r.completion_bound(4096), 1000);
        let r = parse(br#"{"model":"m","n":2,"best_of":5}"#).unwrap();
        assert_eq!(r.completion_bound(7), 35);
        let r = parse(br#"{"model":"m","max_completion_tokens":3,"max_tokens":9}"#).unwrap();
        assert_eq!(r.completion_bound(7), 3);
    }
}
