//! Token usage from upstream responses: `UsageMeter` over any bytes, as a
//! JSON body and as an SSE stream, with and without removing the usage
//! event, fed whole and in chunks cut where the input says. Chunking must
//! change nothing: not the usage, not the chunk count, not the bytes the
//! client gets; and without stripping the bytes pass exactly as they came.
//!
//! Input: a byte `n` (mod 8), `n` chunk lengths (used in turn, a zero
//! giving an empty chunk), then the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use obleth_filters::usage::UsageMeter;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (lengths, body) = rest.split_at(usize::from(n % 8).min(rest.len()));
    // Only zeros would never get through the body.
    let lengths = if lengths.iter().any(|l| *l > 0) {
        lengths
    } else {
        &[]
    };
    for event_stream in [false, true] {
        for strip in [false, true] {
            let (whole, whole_out) = feed(event_stream, strip, body, &[]);
            let (chunked, chunked_out) = feed(event_stream, strip, body, lengths);
            assert_eq!(whole.usage(), chunked.usage(), "usage, chunks {lengths:?}");
            assert_eq!(whole.streamed_chunks(), chunked.streamed_chunks());
            assert_eq!(whole_out, chunked_out, "bytes, chunks {lengths:?}");
            if !strip {
                assert_eq!(whole_out, body, "unchanged without stripping");
            }
            let _ = whole.usage().map(|u| u.total());
        }
    }
});

/// Feeds `body` in chunks of `lengths` (in turn; all of it at once when
/// none), the last marked as the end; returns the meter and what the client
/// got.
fn feed(event_stream: bool, strip: bool, body: &[u8], lengths: &[u8]) -> (UsageMeter, Vec<u8>) {
    let mut meter = UsageMeter::new(event_stream, strip);
    let mut out = Vec::new();
    let mut rest = body;
    let mut turn = lengths.iter().map(|l| usize::from(*l)).cycle();
    loop {
        let take = if lengths.is_empty() {
            rest.len()
        } else {
            turn.next().unwrap_or(rest.len()).min(rest.len())
        };
        let (chunk, after) = rest.split_at(take);
        rest = after;
        let end = rest.is_empty();
        match meter.observe(chunk, end) {
            Some(replaced) => out.extend(replaced),
            None => out.extend_from_slice(chunk),
        }
        if end {
            return (meter, out);
        }
    }
}
