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
