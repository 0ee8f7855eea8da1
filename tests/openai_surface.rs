//! The OpenAI endpoints beyond chat completions, as clients of vLLM and of
//! OpenAI call them through obleth.

mod budget_common;
mod common;

use budget_common::*;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "obk_surface_0123456789abcdef";

async fn get(obleth: &Obleth, path: &str, key: &str) -> (u16, Value) {
    let resp = client()
        .get(obleth.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

#[tokio::test]
async fn get_model_by_id_answers_for_one_model_the_key_may_use() {
    let upstream = mock("u").await;
    let obleth = Obleth::start(&budget_config(&upstream, "{ name: acme }", KEY, "")).await;
    let (status, body) = get(&obleth, "/v1/models/m", KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "id": "m", "object": "model", "created": 0, "owned_by": "obleth" })
    );

    let (status, body) = get(&obleth, "/v1/models/nope", KEY).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");

    let admin = Admin::of(&obleth);
    let narrow = admin
        .create_tenant(json!({ "name": "narrow", "allowed_models": ["other"] }))
        .await;
    let key = admin.create_key(&narrow, json!({ "name": "k" })).await;
    let (status, body) = get(&obleth, "/v1/models/m", &key.secret).await;
    assert_eq!(
        status, 404,
        "a model the tenant may not use is not shown: {body}"
    );
    let (status, _) = get(&obleth, "/v1/models/m", "obk_wrong_0123456789abcdefgh").await;
    assert_eq!(status, 401);
}

const TENANT: &str = "/tenants/acme/budget";

async fn start(upstream: &MockUpstream) -> Obleth {
    Obleth::start(&budget_config(
        upstream,
        "{ name: acme, budget_tokens: 10000000 }",
        KEY,
        "",
    ))
    .await
}

#[tokio::test]
async fn responses_api_json_and_stream_are_charged_their_reported_usage() {
    let upstream = mock("u").await;
    let obleth = start(&upstream).await;
    let request = json!({ "model": "m", "input": "one two three four", "max_output_tokens": 6 });
    let resp = post_json(&obleth, KEY, "/v1/responses", &request).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["usage"]["input_tokens"], 4, "{body}");
    assert_eq!(body["usage"]["output_tokens"], 6, "{body}");
    let views = until_settled(&obleth, 1, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 10, "{views:?}");

    let streamed =
        json!({ "model": "m", "input": "one two", "max_output_tokens": 5, "stream": true });
    let resp = post_json(&obleth, KEY, "/v1/responses", &streamed).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("stream");
    assert_eq!(
        text.matches("response.output_text.delta").count(),
        10,
        "{text}"
    );
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(
        !text.contains("stream_options"),
        "nothing added to a Responses stream"
    );
    let views = until_settled(&obleth, 2, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 10 + 7, "{views:?}");
    assert_eq!(settled_as(&obleth, "charged").await, 2.0);
}

#[tokio::test]
async fn other_v1_endpoints_pass_through_with_auth_admission_and_a_charge() {
    let upstream = mock("u").await;
    let obleth = start(&upstream).await;

    // vLLM's rerank reports usage: it is charged what it reports.
    let rerank = json!({ "model": "m", "query": "a", "documents": ["b", "c"] });
    let resp = post_json(&obleth, KEY, "/v1/rerank", &rerank).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["path"], "/v1/rerank", "{body}");
    let views = until_settled(&obleth, 1, &[TENANT]).await;
    assert_eq!(standing(&views[0], "committed_tokens"), 7, "{views:?}");

    // A transcription upload: multipart, routed by its `model` field, the
    // bytes reach the upstream unchanged and an estimate is charged.
    let mut form = b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n".to_vec();
    form.extend((0..30_000u32).map(|i| (i % 251) as u8));
    form.extend_from_slice(b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--b0undary--\r\n");
    let resp = client()
        .post(obleth.url("/v1/audio/transcriptions"))
        .bearer_auth(KEY)
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .body(form.clone())
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["received_bytes"], form.len(), "{body}");
    assert_eq!(
        body["received_fnv1a"],
        format!("{:016x}", fnv1a(&form)),
        "{body}"
    );
    let views = until_settled(&obleth, 2, &[TENANT]).await;
    assert!(
        standing(&views[0], "committed_tokens") > 7,
        "an estimate is charged: {views:?}"
    );
    assert_eq!(settled_as(&obleth, "estimated").await, 1.0);

    // Still an LLM route: no key, no pass.
    let resp = client()
        .post(obleth.url("/v1/rerank"))
        .json(&rerank)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 401);
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
