//! LLM request bodies: `LlmRequest::parse_as` on any bytes, as JSON or as
//! `multipart/form-data`, then the body that goes upstream, with and without
//! brownout's cap. For a JSON request the upstream body must be JSON that
//! obleth itself reads back as the same request for the upstream model.
//!
//! Input: a selector byte, then the body. Selector bit 0 set: multipart,
//! with the next `selector >> 1` bytes as the boundary; clear: JSON (bit 1
//! chooses between `application/json` and no content type). The cap is
//! the selector too.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use obleth_filters::openai::LlmRequest;

const UPSTREAM: &str = "some/model";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let multipart = selector & 1 == 1;
    let (content_type, body) = if multipart {
        let (boundary, body) = rest.split_at(usize::from(selector >> 1).min(rest.len()));
        let boundary = String::from_utf8_lossy(boundary);
        (
            Some(format!("multipart/form-data; boundary={boundary}")),
            body,
        )
    } else if selector & 2 == 2 {
        (Some("application/json".to_string()), rest)
    } else {
        (None, rest)
    };
    let cap = u64::from(selector);
    let Ok(request) = LlmRequest::parse_as(Bytes::copy_from_slice(body), content_type.as_deref())
    else {
        return;
    };
    let _ = request.completion_bound(4096);
    let _ = request.prompt_bound();

    for request_usage in [false, true] {
        let upstream = request.clone().into_upstream(UPSTREAM, request_usage);
        if multipart {
            let again = LlmRequest::parse_as(upstream, content_type.as_deref())
                .expect("the rewritten form is read back");
            assert_eq!(again.model, UPSTREAM, "the upstream model is named");
        } else {
            let again = reread(&upstream);
            assert_eq!(again.stream, request.stream, "stream kept");
            assert_eq!(again.max_tokens, request.max_tokens, "limits kept");
            assert_eq!(again.choices, request.choices, "choices kept");
            if request_usage {
                assert!(again.asks_for_usage(), "include_usage set upstream");
            } else {
                assert_eq!(again.asks_for_usage(), request.asks_for_usage());
            }
        }
    }

    let mut capped = request.clone();
    capped.cap_max_tokens(cap, "max_tokens");
    if !multipart {
        assert!(
            capped.max_tokens.is_some_and(|n| n <= cap),
            "capped at {cap}: {:?}",
            capped.max_tokens
        );
    }
    let limit = capped.max_tokens;
    let upstream = capped.into_upstream(UPSTREAM, true);
    if !multipart {
        let again = reread(&upstream);
        assert_eq!(again.max_tokens, limit, "the cap goes upstream");
        assert!(again.asks_for_usage());
    }
});

/// The upstream body of a JSON request, read back: JSON, for the upstream
/// model.
fn reread(upstream: &Bytes) -> LlmRequest {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(upstream) {
        panic!(
            "the upstream body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(upstream)
        );
    }
    match LlmRequest::parse(upstream.clone()) {
        Ok(again) => {
            assert_eq!(again.model, UPSTREAM, "the upstream model is named");
            again
        }
        Err(e) => panic!(
            "the upstream body is refused ({e}): {:?}",
            String::from_utf8_lossy(upstream)
        ),
    }
}
