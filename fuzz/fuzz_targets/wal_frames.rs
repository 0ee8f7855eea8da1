//! The usage write-ahead log's frame decoder (`length`, `crc32`, JSON), as
//! the shipper reads segments left by a crash: any bytes must decode
//! without a panic into records at increasing offsets, stopping at the
//! first torn frame, and what it decodes must encode and decode again to
//! the same records.
//!
//! Input: a mode byte, then the rest. Mode bit 0 clear: the rest is the
//! segment as is. Set: the rest is payloads separated by 0xff (which no
//! UTF-8 holds), framed with their right checksums so the fuzzer reaches
//! the JSON, and the segment then cut short by `mode >> 1` bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use obleth_filters::telemetry::decode_frames;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let segment = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut segment: Vec<u8> = rest.split(|b| *b == 0xff).flat_map(frame).collect();
        segment.truncate(segment.len().saturating_sub(usize::from(mode >> 1)));
        segment
    };
    let (records, torn_at) = decode_frames(&segment);
    let mut end = 0;
    for (_, next) in &records {
        assert!(*next > end && *next <= segment.len() as u64, "offsets");
        end = *next;
    }
    if let Some(torn) = torn_at {
        assert!(torn >= end && torn < segment.len() as u64, "torn at {torn}");
    }

    let again: Vec<u8> = records
        .iter()
        .flat_map(|(r, _)| frame(&serde_json::to_vec(r).expect("a read record encodes")))
        .collect();
    let (reread, torn_again) = decode_frames(&again);
    assert_eq!(torn_again, None);
    assert_eq!(
        reread.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        records.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
});

/// A frame as the log writes it: length and CRC-32 of the payload, little
/// endian, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}
