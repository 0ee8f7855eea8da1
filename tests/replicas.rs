//! Several replicas on one Postgres and one Redis, as the scaling guide runs
//! them: deleting a tenant or a model takes its keys and models away on
//! every replica at once, and a key no store has is remembered as unknown in
//! Redis, so other replicas refuse it without asking the store.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;

async fn status(obleth: &Obleth, secret: &str, model: &str) -> u16 {
    let resp = post_chat(obleth, secret, &two_token_chat(model)).await;
    resp.status().as_u16()
}

/// Waits until every replica answers `expected` for the key and model,
/// all within five seconds.
async fn everywhere(replicas: &[&Obleth], secret: &str, model: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for (i, replica) in replicas.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_for(&format!("replica {i}"), expected, left, || {
            status(replica, secret, model)
        })
        .await;
    }
}

#[tokio::test]
async fn deleting_a_tenant_or_a_model_takes_effect_on_every_replica() {
    let (upstream, db, prefix) = shared_state().await;
    let a = Obleth::start(&shared_store_config(&upstream, &db, &prefix)).await;
    let b = Obleth::start(&shared_store_config(&upstream, &db, &prefix)).await;
    let admin = Admin::of(&a);
    let gone = admin.tenant_model_and_key("leaving", "small").await;
    let stays = admin.tenant_model_and_key("staying", "big").await;
    // Both replicas cache both keys (in-process and in Redis).
    everywhere(&[&a, &b], &gone, "small", 200).await;
    everywhere(&[&a, &b], &stays, "big", 200).await;

    admin.ok("DELETE", "/tenants/leaving", None, 204).await;
    everywhere(&[&a, &b], &gone, "small", 401).await;
    everywhere(&[&a, &b], &stays, "small", 200).await;

    admin.ok("DELETE", "/models/small", None, 204).await;
    everywhere(&[&a, &b], &stays, "small", 404).await;
    everywhere(&[&a, &b], &stays, "big", 200).await;

    // Nothing of the deleted tenant is left in the Redis hot cache.
    let mut conn = redis_connection().await;
    let keys: Vec<String> = conn.keys(format!("{prefix}key:*")).await.expect("keys");
    for key in keys {
        let entry: Option<String> = conn.get(&key).await.expect("get");
        assert!(
            !entry.unwrap_or_default().contains("leaving"),
            "{key} still holds the deleted tenant"
        );
    }
}

#[tokio::test]
async fn an_unknown_key_is_remembered_in_redis_for_every_replica() {
    let (upstream, db, prefix) = shared_state().await;
    let a = Obleth::start(&shared_store_config(&upstream, &db, &prefix)).await;
    let admin = Admin::of(&a);
    admin.tenant_model_and_key("acme", "small").await;
    let unknown = "obk_never_issued_0000000000000000";
    assert_eq!(status(&a, unknown, "small").await, 401);

    // One negative entry, with the short TTL of an unknown key.
    let mut conn = redis_connection().await;
    let keys: Vec<String> = conn.keys(format!("{prefix}key:*")).await.expect("keys");
    let mut negative = Vec::new();
    for key in &keys {
        let entry: String = conn.get(key).await.expect("get");
        if entry == "\"missing\"" {
            let ttl: i64 = conn.ttl(key).await.expect("ttl");
            negative.push(ttl);
        }
    }
    assert_eq!(negative.len(), 1, "{keys:?}");
    assert!((1..=30).contains(&negative[0]), "ttl {}", negative[0]);

    // A replica that never saw the key refuses it from Redis alone: with
    // the keys table gone it could not have asked the store (that is a 503).
    let b = Obleth::start(&shared_store_config(&upstream, &db, &prefix)).await;
    let mut pg = db.connect().await;
    sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_hidden")
        .execute(&mut pg)
        .await
        .expect("hide keys");
    assert_eq!(status(&b, unknown, "small").await, 401);
    assert_eq!(
        status(&b, "obk_another_unknown_00000000000000", "small").await,
        503,
        "a key Redis knows nothing of needs the store"
    );
}
