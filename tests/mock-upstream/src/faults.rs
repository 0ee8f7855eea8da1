//! Response bodies, their pacing, and the faults (`x-mock-fault`) that
//! break them on purpose.
//!
//! Connection-level faults (`close`, `hang`) are carried out by the handler
//! before any byte is sent; the body-level ones (`close-mid-body`,
//! `slow-body-ms:N`) are shaped here, by turning the body into a stream of
//! chunks that is paced, or that fails part-way: a body stream that returns
//! an error makes hyper abort the connection without the final chunk, which
//! the client sees as an upstream error rather than a clean end.

use std::io;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

/// The body type of every response the mock sends.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// Streamed `close-mid-body` responses are cut after this many events.
const EVENTS_BEFORE_CUT: usize = 2;

/// How long a cut body waits before failing, so hyper flushes the partial
/// body to the client first (it drops unflushed bytes when a body fails).
const FLUSH_GRACE: Duration = Duration::from_millis(20);

/// A deliberate misbehaviour requested with `x-mock-fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Close the connection without sending any response byte.
    Close,
    /// Never answer; keep the connection open until the client goes away.
    Hang,
    /// Send the headers and part of the body, then abort the connection.
    CloseMidBody,
    /// Send the headers at once, then the body in at least three chunks
    /// with this delay between them.
    SlowBody(Duration),
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if let Some(ms) = value.strip_prefix("slow-body-ms:") {
            return ms
                .trim()
                .parse()
                .map(|ms| Fault::SlowBody(Duration::from_millis(ms)))
                .map_err(|_| {
                    format!("invalid x-mock-fault {value:?}: expected slow-body-ms:<millis>")
                });
        }
        match value {
            "close" => Ok(Fault::Close),
            "hang" => Ok(Fault::Hang),
            "close-mid-body" => Ok(Fault::CloseMidBody),
            _ => Err(format!(
                "unknown x-mock-fault {value:?}: expected close, hang, close-mid-body or slow-body-ms:<millis>"
            )),
        }
    }
}

/// One piece of a streamed body: an SSE event, sent as its own HTTP chunk.
pub(crate) struct Chunk {
    pub(crate) data: Bytes,
    /// Whether the stream's token pace applies before this chunk (token
    /// events are paced; the role, final, usage and `[DONE]` events are not).
    pub(crate) paced: bool,
}

impl Chunk {
    /// A chunk sent at the token pace.
    pub(crate) fn paced(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            paced: true,
        }
    }

    /// A chunk sent as soon as the previous one.
    pub(crate) fn unpaced(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            paced: false,
        }
    }
}

/// Lazily produced chunks, so a long stream is never held in memory whole.
pub(crate) type Chunks = Box<dyn Iterator<Item = Chunk> + Send>;

/// What a handler answers, before pacing and faults shape it.
pub(crate) enum Payload {
    /// A complete body (JSON, text).
    Full(Bytes),
    /// A stream of server-sent events.
    Events(Chunks),
}

/// How the chunks of a streamed body are timed and whether it is cut.
#[derive(Clone, Copy)]
struct Plan {
    /// Delay before paced chunks (`Duration::ZERO` for none).
    pace: Duration,
    /// `slow-body-ms`: delay before every chunk but the first.
    slow: Option<Duration>,
    /// `close-mid-body`: fail after this many chunks.
    cut_after: Option<usize>,
}

/// Turns a handler's payload into the response body: paced by `pace`
/// (between token events) and broken as the body-level `fault` asks.
pub(crate) fn body(payload: Payload, pace: Duration, fault: Option<Fault>) -> ResponseBody {
    let (slow, cut) = match fault {
        Some(Fault::SlowBody(delay)) => (Some(delay), false),
        Some(Fault::CloseMidBody) => (None, true),
        _ => (None, false),
    };
    match payload {
        Payload::Full(bytes) if slow.is_none() && !cut => full(bytes),
        Payload::Full(bytes) => {
            let pieces = if cut {
                // Half of the body: a JSON document that never completes.
                vec![bytes.slice(..bytes.len() / 2)]
            } else {
                split(bytes, 3)
            };
            let plan = Plan {
                pace: Duration::ZERO,
                slow,
                cut_after: cut.then_some(1),
            };
            streamed(Box::new(pieces.into_iter().map(Chunk::unpaced)), plan)
        }
        Payload::Events(chunks) => {
            let plan = Plan {
                pace,
                slow,
                cut_after: cut.then_some(EVENTS_BEFORE_CUT),
            };
            streamed(chunks, plan)
        }
    }
}

/// A complete body, sent with a `content-length`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Splits `bytes` into `parts` non-empty pieces (fewer if it is shorter).
fn split(bytes: Bytes, parts: usize) -> Vec<Bytes> {
    let size = bytes.len().div_ceil(parts).max(1);
    (0..bytes.len())
        .step_by(size)
        .map(|start| bytes.slice(start..bytes.len().min(start + size)))
        .collect()
}

struct StreamState {
    chunks: Chunks,
    plan: Plan,
    sent: usize,
    failed: bool,
}

fn streamed(chunks: Chunks, plan: Plan) -> ResponseBody {
    let state = StreamState {
        chunks,
        plan,
        sent: 0,
        failed: false,
    };
    let frames = stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        if state.plan.cut_after == Some(state.sent) {
            state.failed = true;
            tokio::time::sleep(FLUSH_GRACE).await;
            let err = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "x-mock-fault: close-mid-body",
            );
            return Some((Err(err), state));
        }
        // Empty data frames would be meaningless on the wire; skip them.
        let chunk = state.chunks.by_ref().find(|chunk| !chunk.data.is_empty())?;
        let delay = match state.plan.slow {
            Some(_) if state.sent == 0 => Duration::ZERO,
            Some(delay) => delay,
            None if chunk.paced => state.plan.pace,
            None => Duration::ZERO,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.sent += 1;
        Some((Ok(Frame::data(chunk.data)), state))
    });
    StreamBody::new(frames).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults() {
        assert_eq!("close".parse(), Ok(Fault::Close));
        assert_eq!(" hang ".parse(), Ok(Fault::Hang));
        assert_eq!("close-mid-body".parse(), Ok(Fault::CloseMidBody));
        assert_eq!(
            "slow-body-ms: 250".parse(),
            Ok(Fault::SlowBody(Duration::from_millis(250)))
        );
        assert!("slow-body-ms:x".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }

    #[test]
    fn splits_into_non_empty_pieces() {
        let pieces = split(Bytes::from_static(b"ok\n"), 3);
        assert_eq!(pieces, ["o", "k", "\n"]);
        let pieces = split(Bytes::from_static(b"0123456789"), 3);
        assert_eq!(pieces, ["0123", "4567", "89"]);
        assert!(split(Bytes::new(), 3).is_empty());
    }
}
