//! The admin API on real Postgres and Redis: CRUD with validation and
//! conflicts, one audit row per mutation, secrets never stored or logged,
//! the generated OpenAPI document, changes reaching another replica, and
//! names and aliases claimed once even by racing replicas.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sqlx::Row;

const PEPPER: &str = "test-pepper";
const ENCRYPTION_KEY: &str = "test-encryption-key";

async fn start(upstream: &MockUpstream, db: &PgDatabase, prefix: &str) -> Obleth {
    Obleth::start_with(
        &shared_store_config(upstream, db, prefix),
        "json",
        &[
            ("OBLETH_API_KEY_PEPPER", PEPPER),
            ("OBLETH_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ],
    )
    .await
}

/// Every row of every table, as text.
async fn dump(db: &PgDatabase) -> String {
    let mut conn = db.connect().await;
    let mut out = String::new();
    for table in [
        "fairshare_groups",
        "tenants",
        "api_keys",
        "models",
        "audit_log",
    ] {
        let row = sqlx::query(&format!(
            "SELECT coalesce(string_agg(t::text, '\n'), '') AS all FROM {table} t"
        ))
        .fetch_one(&mut conn)
        .await
        .expect("dump");
        out.push_str(&row.get::<String, _>("all"));
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn admin_api_validates_audits_every_mutation_and_never_keeps_secrets() {
    let (upstream, db, prefix) = shared_state().await;
    let obleth = start(&upstream, &db, &prefix).await;
    let admin = Admin::of(&obleth);
    let c = client();

    // Authentication of the API itself.
    let api = obleth.admin_url("/api/v1/tenants");
    assert_eq!(c.get(&api).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&api)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let healthz = c.get(obleth.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);

    let mut mutations = 0;
    let research = json!({ "name": "research", "weight": 300 });
    admin.post("/groups", research, 201).await;
    mutations += 1;
    admin
        .post("/groups", json!({ "name": "research" }), 409)
        .await;
    let e = admin
        .post("/groups", json!({ "name": "zero", "weight": 0 }), 400)
        .await;
    assert_eq!(e["error"]["field"], "weight");

    let tenant = admin
        .ok("POST", "/tenants", Some(json!({ "name": "acme", "group": "research", "tokens_per_minute": 1000, "timezone": "Europe/Berlin" })), 201)
        .await;
    mutations += 1;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    assert_eq!(tenant["group_weight"], 300);
    admin.post("/tenants", json!({ "name": "acme" }), 409).await;
    for (spec, status, field) in [
        // A group that does not exist conflicts with the stored state.
        (json!({ "name": "orphan", "group": "nope" }), 409, "group"),
        (
            json!({ "name": "tz", "timezone": "Mars/Base" }),
            400,
            "timezone",
        ),
    ] {
        let e = admin.post("/tenants", spec, status).await;
        assert_eq!(e["error"]["field"], field);
    }
    let e = admin
        .post("/tenants", json!({ "name": "x", "colour": "red" }), 400)
        .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("colour"),
        "{e}"
    );
    admin.post("/tenants", json!({ "name": "w", "weekly_windows": [{ "days": ["moonday"], "start": "09:00", "end": "17:00" }] }), 400).await;
    admin.ok("GET", "/tenants/nobody", None, 404).await;
    let raw = c
        .post(&api)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    let limits = json!({ "weight": 250, "max_in_flight": 4 });
    let patched = admin.patch("/tenants/acme", limits, 200).await;
    mutations += 1;
    assert_eq!(
        (
            patched["weight"].as_u64(),
            patched["max_in_flight"].as_u64()
        ),
        (Some(250), Some(4))
    );
    let by_id = format!("/tenants/{tenant_id}");
    let patched = admin
        .patch(&by_id, json!({ "max_in_flight": null }), 200)
        .await;
    mutations += 1;
    assert!(patched["max_in_flight"].is_null());
    admin
        .patch("/tenants/acme", json!({ "status": "sleeping" }), 400)
        .await;

    let model = admin
        .post("/models", json!({ "name": "small", "pool": "p", "upstream_model": "vendor/small", "upstream_key": "sk-live-upstream-secret" }), 201)
        .await;
    mutations += 1;
    assert_eq!(model["upstream_key_set"], true);
    assert!(
        model.get("upstream_key").is_none(),
        "upstream keys are write-only: {model}"
    );
    admin
        .post("/models", json!({ "name": "nowhere" }), 400)
        .await;
    // The document allows 64 aliases; 65 as sent are refused even when
    // they repeat one name.
    let refused = admin
        .post(
            "/models",
            json!({ "name": "many", "pool": "p", "aliases": vec!["same"; 65] }),
            400,
        )
        .await;
    assert_eq!(refused["error"]["field"], "aliases", "{refused}");

    let CreatedKey { id: key_id, secret } = admin.create_key("acme", json!({ "name": "ci" })).await;
    mutations += 1;
    admin
        .post("/tenants/acme/keys", json!({ "name": "ci" }), 409)
        .await;
    let listed = admin.ok("GET", "/tenants/acme/keys", None, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&secret[8..]),
        "secrets are shown once"
    );
    assert!(listed[0].get("hash").is_none());

    let resp = post_chat(&obleth, &secret, &two_token_chat("small")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-mock-saw-authorization"],
        "Bearer sk-live-upstream-secret"
    );

    let key = format!("/keys/{key_id}");
    admin.patch(&key, json!({ "disabled": true }), 200).await;
    mutations += 1;
    let rotated = admin
        .ok("POST", &format!("/keys/{key_id}/rotate"), None, 200)
        .await;
    mutations += 1;
    let rotated_secret = rotated["secret"].as_str().unwrap().to_string();
    admin
        .put("/groups/research", json!({ "weight": 200 }), 200)
        .await;
    mutations += 1;
    admin
        .patch("/models/small", json!({ "max_in_flight": 8 }), 200)
        .await;
    mutations += 1;
    admin.ok("DELETE", &key, None, 204).await;
    mutations += 1;
    admin.ok("DELETE", &key, None, 404).await;
    admin.ok("DELETE", "/groups/research", None, 409).await;

    // One audit row per successful mutation, newest first, by our actor.
    let audit = admin.ok("GET", "/audit?limit=1000", None, 200).await;
    let rows = audit.as_array().unwrap();
    assert_eq!(rows.len(), mutations, "{audit:#}");
    assert!(rows.iter().all(|r| r["actor"] == "test-suite"));
    assert_eq!(rows[0]["action"], "key.delete");
    let for_key = admin
        .ok(
            "GET",
            &format!("/audit?entity_type=key&entity_id={key_id}"),
            None,
            200,
        )
        .await;
    let actions: Vec<&str> = for_key
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["key.delete", "key.rotate", "key.update", "key.create"]
    );
    let page = admin.ok("GET", "/audit?limit=2", None, 200).await;
    let last = page[1]["id"].as_i64().unwrap();
    let next = admin
        .ok("GET", &format!("/audit?limit=2&before={last}"), None, 200)
        .await;
    assert!(next[0]["id"].as_i64().unwrap() < last);

    // Secrets: stored as peppered SHA-256 only, upstream keys sealed,
    // neither in any table, the audit log, the logs or the access log.
    let everything = dump(&db).await;
    for s in [
        &secret,
        &rotated_secret,
        &"sk-live-upstream-secret".to_string(),
    ] {
        assert!(
            !everything.contains(s.as_str()),
            "secret found in the store"
        );
        assert!(
            !obleth.stderr().contains(s.as_str()),
            "secret found in the log"
        );
        let access = std::fs::read_to_string(&obleth.access_log).unwrap_or_default();
        assert!(
            !access.contains(s.as_str()),
            "secret found in the access log"
        );
    }
    assert!(
        everything.contains("enc:v1:"),
        "upstream key sealed at rest"
    );
    let plain_hash = obleth_filters::auth::KeyHasher::new(None).hash(&rotated_secret);
    assert!(!everything.contains(&plain_hash), "hashes are peppered");
}

#[tokio::test]
async fn openapi_document_is_generated_from_the_handlers() {
    let (upstream, db, prefix) = shared_state().await;
    let obleth = start(&upstream, &db, &prefix).await;
    let doc = Admin::of(&obleth)
        .ok("GET", "/openapi.json", None, 200)
        .await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/tenants",
        "/api/v1/tenants/{id}",
        "/api/v1/tenants/{id}/keys",
        "/api/v1/keys/{id}/rotate",
        "/api/v1/models/{name}",
        "/api/v1/audit",
        "/api/v1/groups/{name}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(paths["/api/v1/tenants/{id}"].get("patch").is_some());
    assert!(doc["components"]["schemas"]["TenantSpec"].is_object());
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}

#[tokio::test]
async fn changes_reach_another_replica_within_seconds() {
    let (upstream, db, prefix) = shared_state().await;
    let a = start(&upstream, &db, &prefix).await;
    let b = start(&upstream, &db, &prefix).await;
    let admin = Admin::of(&a);
    let secret = admin.tenant_model_and_key("acme", "small").await;
    let key_id = admin.ok("GET", "/tenants/acme/keys", None, 200).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("/keys/{key_id}");

    let body = two_token_chat("small");
    let on_b = |expected: u16| {
        wait_for(
            "replica b's answer",
            expected,
            Duration::from_secs(5),
            || async { post_chat(&b, &secret, &body).await.status().as_u16() },
        )
    };
    on_b(200).await;
    admin.patch(&key, json!({ "disabled": true }), 200).await;
    on_b(403).await;
    admin.patch(&key, json!({ "disabled": false }), 200).await;
    on_b(200).await;
    admin
        .patch("/models/small", json!({ "enabled": false }), 200)
        .await;
    on_b(404).await;
}

#[tokio::test]
async fn a_replica_serves_keys_cached_in_redis_without_asking_postgres() {
    let (upstream, db, prefix) = shared_state().await;
    let a = start(&upstream, &db, &prefix).await;
    let admin = Admin::of(&a);
    let secret = admin.tenant_model_and_key("acme", "small").await;
    let body = two_token_chat("small");
    let call = |o: &Obleth, key: &str| chat_request(o, key).json(&body).send();
    assert_eq!(
        call(&a, &secret).await.unwrap().status(),
        200,
        "warms the redis hot cache"
    );

    let b = start(&upstream, &db, &prefix).await;
    // Take the keys away from Postgres: only Redis can answer now.
    let mut conn = db.connect().await;
    sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_hidden")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        call(&b, &secret).await.unwrap().status(),
        200,
        "resolved from redis"
    );
    let unknown = call(&b, "obk_unknown_000000000000000000000").await.unwrap();
    assert_eq!(
        unknown.status(),
        503,
        "a key only the store could answer for"
    );
    assert_eq!(unknown.headers()["retry-after"], "1");
}

#[tokio::test]
async fn racing_replicas_cannot_both_claim_one_model_alias() {
    let (upstream, db, prefix) = shared_state().await;
    let a = start(&upstream, &db, &prefix).await;
    let b = start(&upstream, &db, &prefix).await;
    let (admin_a, admin_b) = (Admin::of(&a), Admin::of(&b));
    for round in 0..10 {
        let shared = format!("shared-{round}");
        let body = |name: String| json!({ "name": name, "pool": "p", "aliases": [shared.clone()] });
        let (x, y) = tokio::join!(
            admin_a.call("POST", "/models", Some(body(format!("x-{round}")))),
            admin_b.call("POST", "/models", Some(body(format!("y-{round}")))),
        );
        let mut statuses = [x.0, y.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}: {x:?} {y:?}");
        let loser = if x.0 == 409 { &x.1 } else { &y.1 };
        assert_eq!(loser["error"]["field"], "aliases", "{loser}");
    }
    // Each alias names exactly one model.
    let models = admin_a.ok("GET", "/models", None, 200).await;
    let mut aliases: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["aliases"].as_array().unwrap().iter())
        .filter_map(Value::as_str)
        .collect();
    let all = aliases.len();
    aliases.sort_unstable();
    aliases.dedup();
    assert_eq!((all, aliases.len()), (10, 10), "{models}");
}
