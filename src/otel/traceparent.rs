//! W3C Trace Context (`traceparent`): the trace a request continues and the
//! header obleth sends upstream so the trace goes on there.

/// The parent named by a client's `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Reads `version-traceid-parentid-flags`. Version `00` must have exactly
/// that shape; a later version may append fields, which are ignored (W3C
/// Trace Context §3.2.4). All-zero ids and version `ff` are invalid.
pub fn parse(header: &[u8]) -> Option<Parent> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let mut parts = text.splitn(5, '-');
    let version = hex_array::<1>(parts.next()?)?[0];
    let trace_id = hex_array::<16>(parts.next()?)?;
    let span_id = hex_array::<8>(parts.next()?)?;
    let flags_text = parts.next()?;
    let flags = hex_array::<1>(flags_text.get(..2)?)?[0];
    let rest = parts.next();
    let valid_tail = match version {
        0xff => false,
        0 => flags_text.len() == 2 && rest.is_none(),
        _ => flags_text.len() == 2,
    };
    if !valid_tail || trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The `traceparent` naming `span_id` of `trace_id` as the parent.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex::encode(trace_id),
        hex::encode(span_id),
        if sampled { "01" } else { "00" }
    )
}

/// Lower-case hex only, as the specification requires.
fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn a_version_00_header_names_its_trace_span_and_sampling() {
        let parent = parse(format!("00-{TRACE}-{SPAN}-01").as_bytes()).expect("valid");
        assert_eq!(hex::encode(parent.trace_id), TRACE);
        assert_eq!(hex::encode(parent.span_id), SPAN);
        assert!(parent.sampled);
        let unsampled = parse(format!("00-{TRACE}-{SPAN}-00").as_bytes()).expect("valid");
        assert!(!unsampled.sampled);
    }

    #[test]
    fn formatting_and_parsing_agree() {
        let header = format(&[7; 16], &[9; 8], true);
        let parent = parse(header.as_bytes()).expect("valid");
        assert_eq!((parent.trace_id, parent.span_id), ([7; 16], [9; 8]));
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        assert!(parse(format!("01-{TRACE}-{SPAN}-01-extra").as_bytes()).is_some());
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        let zeros = "0".repeat(32);
        for bad in [
            String::new(),
            "garbage".into(),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{zeros}-{SPAN}-01"),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{}-{SPAN}-01", &TRACE[..30]),
            "00-é".into(),
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
