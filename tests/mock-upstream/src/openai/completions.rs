//! `/v1/chat/completions` and `/v1/completions`, plain or streamed.

use std::iter;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{inputs, sse, to_json, words, DEFAULT_MODEL};
use crate::faults::{Chunk, Chunks};
use crate::handler::Reply;

const DEFAULT_MAX_TOKENS: u64 = 16;
const MAX_COMPLETION_TOKENS: u64 = 4096;
/// Tokens counted for each chat message on top of its content's words.
const MESSAGE_OVERHEAD_TOKENS: u64 = 3;
const FINISH_REASON: &str = "length";
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
/// The `object` of a chat stream chunk.
const CHAT_CHUNK: &str = "chat.completion.chunk";
/// The `object` of a text completion and of each of its stream chunks.
const TEXT_COMPLETION: &str = "text_completion";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `"tok0 tok1 … tok{n-1}"`, the text of a non-streamed answer.
fn generated_text(tokens: u64) -> String {
    let words: Vec<String> = (0..tokens).map(|i| format!("tok{i}")).collect();
    words.join(" ")
}

#[derive(Clone, Copy, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<MessageContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

/// What a chat completion, a text completion and each of their stream
/// chunks have around their choices (`C`).
#[derive(Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [C],
    /// The totals on a whole answer. On a stream chunk absent unless
    /// `stream_options.include_usage`; then `null` on every chunk but the
    /// last, which carries the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Deserialize)]
pub(super) struct CompletionRequest {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// What one completion (chat or text) generates.
struct Generation {
    id: String,
    created: u64,
    model: String,
    usage: Usage,
    /// `stream_options.include_usage`: add a usage chunk to the stream.
    include_usage: bool,
}

impl Generation {
    fn new(
        id: String,
        model: Option<String>,
        prompt_tokens: u64,
        max_tokens: Option<u64>,
        stream_options: Option<StreamOptions>,
    ) -> Self {
        let completion_tokens = max_tokens
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .min(MAX_COMPLETION_TOKENS);
        Self {
            id,
            created: unix_now(),
            model: model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            include_usage: stream_options
                .and_then(|options| options.include_usage)
                .unwrap_or(false),
        }
    }

    /// This generation's `object` around `choices`, with `usage` as given.
    fn envelope<'a, C>(
        &'a self,
        object: &'static str,
        choices: &'a [C],
        usage: Option<Option<Usage>>,
    ) -> Envelope<'a, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    /// The usage event closing a stream that asked for it.
    fn usage_event(&self, object: &'static str) -> Bytes {
        sse(&self.envelope::<()>(object, &[], Some(Some(self.usage))))
    }

    /// The `usage` field of a chunk that does not carry the totals.
    fn chunk_usage(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    /// The stream's events: `head`, one paced event per token, then `tail`,
    /// then the usage event if asked for, then `[DONE]`.
    fn events(
        self,
        head: Option<Bytes>,
        token: impl Fn(&Generation, &str) -> Bytes + Send + 'static,
        tail: Bytes,
        usage: impl FnOnce(&Generation) -> Bytes,
    ) -> Chunks {
        let usage = self.include_usage.then(|| usage(&self));
        let generation = Arc::new(self);
        let tokens = (0..generation.usage.completion_tokens)
            .map(move |i| Chunk::paced(token(&generation, &format!("tok{i} "))));
        Box::new(
            head.into_iter()
                .map(Chunk::unpaced)
                .chain(tokens)
                .chain(iter::once(Chunk::unpaced(tail)))
                .chain(usage.map(Chunk::unpaced))
                .chain(iter::once(Chunk::unpaced(Bytes::from_static(DONE_EVENT)))),
        )
    }
}

fn chat_prompt_tokens(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|message| {
            let content = match &message.content {
                None => 0,
                Some(MessageContent::Text(text)) => words(text),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .filter(|part| part.kind.as_deref() == Some("text"))
                    .filter_map(|part| part.text.as_deref())
                    .map(words)
                    .sum(),
            };
            content + MESSAGE_OVERHEAD_TOKENS
        })
        .sum()
}

pub(super) fn chat(request: ChatRequest, seq: u64) -> Result<Reply, String> {
    let prompt_tokens = chat_prompt_tokens(request.messages.as_deref().unwrap_or_default());
    let generation = Generation::new(
        format!("chatcmpl-mock{seq}"),
        request.model,
        prompt_tokens,
        request.max_completion_tokens.or(request.max_tokens),
        request.stream_options,
    );
    if request.stream != Some(true) {
        let content = generated_text(generation.usage.completion_tokens);
        let choices = [ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &content,
                refusal: None,
            },
            logprobs: None,
            finish_reason: FINISH_REASON,
        }];
        let completion =
            generation.envelope("chat.completion", &choices, Some(Some(generation.usage)));
        return Ok(Reply::json(StatusCode::OK, to_json(&completion)));
    }

    fn chunk(
        generation: &Generation,
        delta: Delta<'_>,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        sse(&generation.envelope(CHAT_CHUNK, &choices, generation.chunk_usage()))
    }
    let role = Delta {
        role: Some("assistant"),
        content: Some(""),
    };
    let head = chunk(&generation, role, None);
    let tail = chunk(&generation, Delta::default(), Some(FINISH_REASON));
    let events = generation.events(
        Some(head),
        |generation, token| {
            let delta = Delta {
                role: None,
                content: Some(token),
            };
            chunk(generation, delta, None)
        },
        tail,
        |generation| generation.usage_event(CHAT_CHUNK),
    );
    Ok(Reply::events(events))
}

pub(super) fn completion(request: CompletionRequest, seq: u64) -> Result<Reply, String> {
    let prompt_tokens = match &request.prompt {
        None => 0,
        Some(prompt) => inputs(prompt, "prompt")?
            .iter()
            .map(|input| input.tokens)
            .sum(),
    };
    let generation = Generation::new(
        format!("cmpl-mock{seq}"),
        request.model,
        prompt_tokens,
        request.max_tokens,
        request.stream_options,
    );

    if request.stream != Some(true) {
        let text = generated_text(generation.usage.completion_tokens);
        let choices = [TextChoice {
            text: &text,
            index: 0,
            logprobs: None,
            finish_reason: Some(FINISH_REASON),
        }];
        let completion =
            generation.envelope(TEXT_COMPLETION, &choices, Some(Some(generation.usage)));
        return Ok(Reply::json(StatusCode::OK, to_json(&completion)));
    }

    fn text_chunk(
        generation: &Generation,
        text: &str,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        let choices = [TextChoice {
            text,
            index: 0,
            logprobs: None,
            finish_reason,
        }];
        sse(&generation.envelope(TEXT_COMPLETION, &choices, generation.chunk_usage()))
    }
    let tail = text_chunk(&generation, "", Some(FINISH_REASON));
    let events = generation.events(
        None,
        |generation, token| text_chunk(generation, token, None),
        tail,
        |generation| generation.usage_event(TEXT_COMPLETION),
    );
    Ok(Reply::events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chat_prompt_words_plus_overhead() {
        let messages: Vec<ChatMessage> = serde_json::from_str(
            r#"[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hello  there world"},
                                          {"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null}]"#,
        )
        .unwrap();
        assert_eq!(chat_prompt_tokens(&messages), 2 + 3 + 3 + 3 + 3);
    }

    #[test]
    fn generates_numbered_tokens() {
        assert_eq!(generated_text(0), "");
        assert_eq!(generated_text(3), "tok0 tok1 tok2");
    }
}
