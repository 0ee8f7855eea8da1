//! The admin API on real Postgres and Redis: CRUD with validation and
//! conflicts, one audit row per mutation, secrets never stored or logged,
//! the generated OpenAPI document, changes reaching another replica, and
//! names and aliases claimed once even by racing replicas.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sqlx::Row;

const PEPPER: &str = "test-pepper";
const ENCRYPTION_KEY: &str = "test-encryption-key";

fn config(upstream: &MockUpstream, db: &PgDatabase, prefix: &str) -> String {
    format!(
        "pools:\n{}store:\n  database_url: '{}'\nredis:\n  url: redis://127.0.0.1:6379\n  prefix: '{prefix}'\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], ""),
        db.url
    )
}

async fn start(upstream: &MockUpstream, db: &PgDatabase, prefix: &str) -> Obleth {
    Obleth::start_with(
        &config(upstream, db, prefix),
        "json",
        &[
            ("OBLETH_API_KEY_PEPPER", PEPPER),
            ("OBLETH_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ],
    )
    .await
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 })
}

/// Creates tenant `acme`, model `small` on pool `p` and a key; returns the
/// key's secret.
async fn tenant_model_and_key(admin: &Admin) -> String {
    admin
        .ok("POST", "/tenants", Some(json!({ "name": "acme" })), 201)
        .await;
    admin
        .ok(
            "POST",
            "/models",
            Some(json!({ "name": "small", "pool": "p" })),
            201,
        )
        .await;
    admin
        .create_key("acme", json!({ "name": "k" }))
        .await
        .secret
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
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let obleth = start(&upstream, &db, &redis_prefix()).await;
    let admin = Admin::of(&obleth);
    let c = client();

    // Authentication of the API itself.
    let api = format!("http://{}/api/v1/tenants", obleth.admin);
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
    assert_eq!(
        c.get(format!("http://{}/healthz", obleth.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let mut mutations = 0;
    admin
        .ok(
            "POST",
            "/groups",
            Some(json!({ "name": "research", "weight": 300 })),
            201,
        )
        .await;
    mutations += 1;
    admin
        .ok("POST", "/groups", Some(json!({ "name": "research" })), 409)
        .await;
    let e = admin
        .ok(
            "POST",
            "/groups",
            Some(json!({ "name": "zero", "weight": 0 })),
            400,
        )
        .await;
    assert_eq!(e["error"]["field"], "weight");

    let tenant = admin
        .ok("POST", "/tenants", Some(json!({ "name": "acme", "group": "research", "tokens_per_minute": 1000, "timezone": "Europe/Berlin" })), 201)
        .await;
    mutations += 1;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    assert_eq!(tenant["group_weight"], 300);
    admin
        .ok("POST", "/tenants", Some(json!({ "name": "acme" })), 409)
        .await;
    // A group that does not exist conflicts with the stored state.
    let e = admin
        .ok(
            "POST",
            "/tenants",
            Some(json!({ "name": "orphan", "group": "nope" })),
            409,
        )
        .await;
    assert_eq!(e["error"]["field"], "group");
    let e = admin
        .ok(
            "POST",
            "/tenants",
            Some(json!({ "name": "tz", "timezone": "Mars/Base" })),
            400,
        )
        .await;
    assert_eq!(e["error"]["field"], "timezone");
    let e = admin
        .ok(
            "POST",
            "/tenants",
            Some(json!({ "name": "x", "colour": "red" })),
            400,
        )
        .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("colour"),
        "{e}"
    );
    admin.ok("POST", "/tenants", Some(json!({ "name": "w", "weekly_windows": [{ "days": ["moonday"], "start": "09:00", "end": "17:00" }] })), 400).await;
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

    let patched = admin
        .ok(
            "PATCH",
            "/tenants/acme",
            Some(json!({ "weight": 250, "max_in_flight": 4 })),
            200,
        )
        .await;
    mutations += 1;
    assert_eq!(
        (
            patched["weight"].as_u64(),
            patched["max_in_flight"].as_u64()
        ),
        (Some(250), Some(4))
    );
    let patched = admin
        .ok(
            "PATCH",
            &format!("/tenants/{tenant_id}"),
            Some(json!({ "max_in_flight": null })),
            200,
        )
        .await;
    mutations += 1;
    assert!(patched["max_in_flight"].is_null());
    admin
        .ok(
            "PATCH",
            "/tenants/acme",
            Some(json!({ "status": "sleeping" })),
            400,
        )
        .await;

    let model = admin
        .ok("POST", "/models", Some(json!({ "name": "small", "pool": "p", "upstream_model": "vendor/small", "upstream_key": "sk-live-upstream-secret" })), 201)
        .await;
    mutations += 1;
    assert_eq!(model["upstream_key_set"], true);
    assert!(
        model.get("upstream_key").is_none(),
        "upstream keys are write-only: {model}"
    );
    admin
        .ok("POST", "/models", Some(json!({ "name": "nowhere" })), 400)
        .await;

    let CreatedKey { id: key_id, secret } = admin.create_key("acme", json!({ "name": "ci" })).await;
    mutations += 1;
    admin
        .ok(
            "POST",
            "/tenants/acme/keys",
            Some(json!({ "name": "ci" })),
            409,
        )
        .await;
    let listed = admin.ok("GET", "/tenants/acme/keys", None, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&secret[8..]),
        "secrets are shown once"
    );
    assert!(listed[0].get("hash").is_none());

    let resp = c
        .post(obleth.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat("small"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-mock-saw-authorization"],
        "Bearer sk-live-upstream-secret"
    );

    admin
        .ok(
            "PATCH",
            &format!("/keys/{key_id}"),
            Some(json!({ "disabled": true })),
            200,
        )
        .await;
    mutations += 1;
    let rotated = admin
        .ok("POST", &format!("/keys/{key_id}/rotate"), None, 200)
        .await;
    mutations += 1;
    let rotated_secret = rotated["secret"].as_str().unwrap().to_string();
    admin
        .ok(
            "PUT",
            "/groups/research",
            Some(json!({ "weight": 200 })),
            200,
        )
        .await;
    mutations += 1;
    admin
        .ok(
            "PATCH",
            "/models/small",
            Some(json!({ "max_in_flight": 8 })),
            200,
        )
        .await;
    mutations += 1;
    admin
        .ok("DELETE", &format!("/keys/{key_id}"), None, 204)
        .await;
    mutations += 1;
    admin
        .ok("DELETE", &format!("/keys/{key_id}"), None, 404)
        .await;
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
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let obleth = start(&upstream, &db, &redis_prefix()).await;
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
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let prefix = redis_prefix();
    let a = start(&upstream, &db, &prefix).await;
    let b = start(&upstream, &db, &prefix).await;
    let admin = Admin::of(&a);
    let secret = tenant_model_and_key(&admin).await;
    let key_id = admin.ok("GET", "/tenants/acme/keys", None, 200).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let status_on_b = || async {
        client()
            .post(b.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat("small"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let wait_for = |expected: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = status_on_b().await;
            if status == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica b still answers {status}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(200).await;
    admin
        .ok(
            "PATCH",
            &format!("/keys/{key_id}"),
            Some(json!({ "disabled": true })),
            200,
        )
        .await;
    wait_for(403).await;
    admin
        .ok(
            "PATCH",
            &format!("/keys/{key_id}"),
            Some(json!({ "disabled": false })),
            200,
        )
        .await;
    wait_for(200).await;
    admin
        .ok(
            "PATCH",
            "/models/small",
            Some(json!({ "enabled": false })),
            200,
        )
        .await;
    wait_for(404).await;
}

#[tokio::test]
async fn a_replica_serves_keys_cached_in_redis_without_asking_postgres() {
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let prefix = redis_prefix();
    let a = start(&upstream, &db, &prefix).await;
    let admin = Admin::of(&a);
    let secret = tenant_model_and_key(&admin).await;
    let call = |o: &Obleth, key: &str| {
        client()
            .post(o.url("/v1/chat/completions"))
            .bearer_auth(key.to_string())
            .json(&chat("small"))
            .send()
    };
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
    let upstream = mock("vllm").await;
    let db = PgDatabase::create().await;
    let prefix = redis_prefix();
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
