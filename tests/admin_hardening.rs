//! The admin API against hostile and careless input, on the embedded
//! default store (a SQLite file): names and aliases as one namespace (also
//! when seeding), concurrent writers, pools checked against the live
//! configuration, tenant names that cannot pass for ids, JSON errors and
//! validated parameters everywhere, and an OpenAPI document that describes
//! what the server answers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "obk_hardening_00000000000000000000";

fn llm_config(upstream: &MockUpstream, extra_pools: &str) -> String {
    format!(
        "pools:\n{}{extra_pools}routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], "")
    )
}

/// A mock upstream and obleth with one `llm` route to it and nothing
/// seeded: the start of most tests here.
async fn start_llm() -> (MockUpstream, Obleth) {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&llm_config(&upstream, "")).await;
    (upstream, obleth)
}

/// The model the upstream was asked for (the mock echoes it).
async fn served(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["model"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn names_and_aliases_are_one_namespace_so_an_alias_cannot_take_an_allowed_model() {
    let upstream = mock("vllm").await;
    let obleth = Obleth::start(&format!(
        "{}seed:\n  tenants: [{{ name: only-a, allowed_models: [model-a] }}]\n  keys: [{{ tenant: only-a, name: k, secret: {KEY} }}]\n",
        llm_config(&upstream, "")
    ))
    .await;
    let admin = Admin::of(&obleth);
    for (name, upstream_model) in [("model-a", "vendor/a"), ("model-b", "vendor/b")] {
        let aliases = [format!("{name}-alias")];
        let spec = json!({ "name": name, "pool": "p", "upstream_model": upstream_model, "aliases": aliases });
        admin.post("/models", spec, 201).await;
    }

    // The reported bypass: model-b takes model-a's name as an alias.
    let b = "/models/model-b";
    let e = admin.patch(b, json!({ "aliases": ["model-a"] }), 409).await;
    assert_eq!(e["error"]["field"], "aliases", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("model-a"), "{e}");
    // Another model's alias is taken too, in a patch and in a create.
    admin
        .patch(b, json!({ "aliases": ["model-a-alias"] }), 409)
        .await;
    let c = json!({ "name": "model-c", "pool": "p", "aliases": ["model-b"] });
    let e = admin.post("/models", c, 409).await;
    assert_eq!(e["error"]["field"], "aliases", "{e}");
    // A name may not be another model's alias.
    let e = admin
        .post(
            "/models",
            json!({ "name": "model-b-alias", "pool": "p" }),
            409,
        )
        .await;
    assert_eq!(e["error"]["field"], "name", "{e}");
    // Nothing of the refused writes was kept.
    let b = admin.ok("GET", "/models/model-b", None, 200).await;
    assert_eq!(b["aliases"], json!(["model-b-alias"]));
    admin.ok("GET", "/models/model-c", None, 404).await;

    // Aliases are a set: repeats and the model's own name are dropped.
    let d = json!({ "name": "model-d", "pool": "p", "aliases": ["d1", "d1", "model-d", "d2"] });
    let d = admin.post("/models", d, 201).await;
    assert_eq!(d["aliases"], json!(["d1", "d2"]));
    // A model keeps its own aliases across a patch; freed names are free.
    let kept = json!({ "aliases": ["d2", "d3"] });
    admin.patch("/models/model-d", kept, 200).await;
    admin
        .post("/models", json!({ "name": "d1", "pool": "p" }), 201)
        .await;
    admin.ok("DELETE", "/models/model-d", None, 204).await;
    let e = json!({ "name": "model-e", "pool": "p", "aliases": ["d2", "d3"] });
    admin.post("/models", e, 201).await;

    // The tenant allowed only model-a is still served model-a.
    let resp = post_chat(&obleth, KEY, &two_token_chat("model-a")).await;
    assert_eq!(served(resp).await, "vendor/a");
}

#[tokio::test]
async fn two_concurrent_creates_cannot_both_claim_one_alias() {
    let (_upstream, obleth) = start_llm().await;
    let admin = Admin::of(&obleth);
    for round in 0..10 {
        let shared = format!("shared-{round}");
        let create = |name: String| {
            let body = json!({ "name": name, "pool": "p", "aliases": [shared.clone()] });
            admin.call("POST", "/models", Some(body))
        };
        let (x, y) = tokio::join!(create(format!("x-{round}")), create(format!("y-{round}")));
        let mut statuses = [x.0, y.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}: {x:?} {y:?}");
    }
}

#[tokio::test]
async fn seeding_a_model_whose_alias_is_a_stored_models_name_fails_start_up() {
    let upstream = mock("vllm").await;
    let dir = TempDir::new();
    let store = format!(
        "store:\n  database_url: 'sqlite://{}'\n",
        dir.path().join("shared.db").display()
    );
    {
        let obleth = Obleth::start(&format!("{}{store}", llm_config(&upstream, ""))).await;
        let stored = json!({ "name": "stored", "pool": "p" });
        Admin::of(&obleth).post("/models", stored, 201).await;
    }
    let free = |p: u16| format!("127.0.0.1:{p}");
    let config = dir.path().join("seeded.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: http\n    address: {}\nadmin:\n  address: {}\nmetrics:\n  address: {}\n{store}{}\
             seed:\n  models:\n    - {{ name: newcomer, pool: p, aliases: [stored] }}\n",
            free(free_port()),
            free(free_port()),
            free(free_port()),
            llm_config(&upstream, "")
        ),
    )
    .unwrap();
    let (failed, log) = run_to_exit(&config, dir.path(), Duration::from_secs(15)).await;
    assert!(failed, "start-up must fail on the clash:\n{log}");
    assert!(log.contains("stored"), "the error names the clash:\n{log}");
}

#[tokio::test]
async fn eight_concurrent_writers_on_sqlite_all_succeed() {
    let (_upstream, obleth) = start_llm().await;
    let admin = std::sync::Arc::new(Admin::of(&obleth));
    let mut writers = Vec::new();
    for w in 0..8 {
        let admin = admin.clone();
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..20 {
                let (method, path, body) = match i % 4 {
                    0 => (
                        "POST",
                        "/tenants".to_string(),
                        json!({ "name": format!("w{w}-{i}") }),
                    ),
                    1 => (
                        "PATCH",
                        format!("/tenants/w{w}-{}", i - 1),
                        json!({ "weight": 100 + i }),
                    ),
                    2 => (
                        "PUT",
                        "/groups/default".to_string(),
                        json!({ "weight": 100 + w }),
                    ),
                    _ => (
                        "POST",
                        "/models".to_string(),
                        json!({ "name": format!("m{w}-{i}"), "pool": "p", "aliases": [format!("a{w}-{i}")] }),
                    ),
                };
                let (status, value) = admin.call(method, &path, Some(body)).await;
                if !(200..300).contains(&status) {
                    failures.push(format!("{method} {path}: {status} {value}"));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for w in writers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 160 writes failed: {failures:#?}",
        failures.len()
    );
}

#[tokio::test]
async fn a_model_pool_must_be_a_pool_of_the_live_configuration() {
    let (upstream, obleth) = start_llm().await;
    let admin = Admin::of(&obleth);
    let e = admin
        .post("/models", json!({ "name": "m", "pool": "nope" }), 400)
        .await;
    assert_eq!(e["error"]["field"], "pool", "{e}");
    admin
        .post("/models", json!({ "name": "m", "pool": "p" }), 201)
        .await;
    let e = admin
        .patch("/models/m", json!({ "pool": "nope" }), 400)
        .await;
    assert_eq!(e["error"]["field"], "pool", "{e}");
    assert_eq!(admin.ok("GET", "/models/m", None, 200).await["pool"], "p");

    // A pool added by a reload is usable at once.
    obleth.reload(&llm_config(&upstream, &pool("q", &[&upstream], "")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = admin
            .call("PATCH", "/models/m", Some(json!({ "pool": "q" })))
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 400, "{body}");
        assert!(Instant::now() < deadline, "pool q never became known");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let doc = admin.ok("GET", "/openapi.json", None, 200).await;
    let pools = doc["components"]["schemas"]["ModelSpec"]["properties"]["pool"].to_string();
    let listed = pools.contains("\"q\"");
    assert!(listed, "the document lists live pools: {pools}");
}

#[tokio::test]
async fn tenant_names_cannot_take_the_shape_of_ids() {
    let (_upstream, obleth) = start_llm().await;
    let admin = Admin::of(&obleth);
    let acme = admin.post("/tenants", json!({ "name": "acme" }), 201).await;
    let acme_id = acme["id"].as_str().unwrap().to_string();
    assert!(acme_id.starts_with("ten_"), "{acme_id}");
    let e = admin
        .post("/tenants", json!({ "name": acme_id }), 400)
        .await;
    assert_eq!(e["error"]["field"], "name", "{e}");
    admin
        .post("/tenants", json!({ "name": "ten_x" }), 400)
        .await;
    admin
        .post("/tenants", json!({ "name": "other" }), 201)
        .await;
    let e = admin
        .patch("/tenants/other", json!({ "name": acme_id }), 400)
        .await;
    assert_eq!(e["error"]["field"], "name", "{e}");
    // By id and by name, each string reaches one tenant.
    let by_id = admin
        .ok("GET", &format!("/tenants/{acme_id}"), None, 200)
        .await;
    assert_eq!(by_id["name"], "acme");
    admin
        .ok("DELETE", &format!("/tenants/{acme_id}"), None, 204)
        .await;
    assert_eq!(
        admin.ok("GET", "/tenants/other", None, 200).await["name"],
        "other"
    );
}

/// A raw call: status, `content-type`, `allow` and the body as JSON.
async fn raw(
    obleth: &Obleth,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, String, Value) {
    let mut req = client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            obleth.admin_url(path),
        )
        .bearer_auth(ADMIN_TOKEN);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if !body.is_empty() {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let (ct, allow) = (
        header_text(&resp, "content-type"),
        header_text(&resp, "allow"),
    );
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, allow, value)
}

#[tokio::test]
async fn every_admin_error_is_json_and_every_parameter_is_validated() {
    let (_upstream, obleth) = start_llm().await;
    let json_error = |(status, ct, _, body): &(u16, String, String, Value), expected: u16| {
        assert_eq!(*status, expected, "{body}");
        assert!(ct.starts_with("application/json"), "{ct}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    };
    for (query, field) in [
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("before=zzz", "before"),
        ("before=0", "before"),
        ("entity_type=planet", "entity_type"),
    ] {
        let r = raw(&obleth, "GET", &format!("/api/v1/audit?{query}"), None, "").await;
        json_error(&r, 400);
        assert_eq!(r.3["error"]["field"], field, "{query}: {}", r.3);
    }
    // Unknown parameters and routes, and path encodings.
    for (path, status) in [
        ("/api/v1/audit?colour=red", 400),
        ("/api/v1/usage/requests?tenant=x&limit=0", 400),
        ("/api/v1/usage?group_by=planet", 400),
        ("/api/v1/usage?from=yesterday", 400),
        ("/api/v1/nothing-here", 404),
        ("/api/v1/tenants/%FF%FE", 400),
    ] {
        json_error(&raw(&obleth, "GET", path, None, "").await, status);
    }
    // Unknown methods, media types and bodies.
    let r = raw(&obleth, "DELETE", "/api/v1/audit", None, "").await;
    json_error(&r, 405);
    let allow = &r.2;
    assert!(
        allow.contains("GET"),
        "405 names the allowed methods: {allow:?}"
    );
    for (content_type, body, status) in [
        ("text/plain", "{\"name\":\"a\"}", 415),
        ("application/json", "{oops", 400),
        ("application/json", "[1]", 400),
    ] {
        let r = raw(&obleth, "POST", "/api/v1/tenants", Some(content_type), body).await;
        json_error(&r, status);
    }
    // An integer written as 3.0 is the integer 3 in JSON; 3.5 is not.
    let group = |body| {
        raw(
            &obleth,
            "POST",
            "/api/v1/groups",
            Some("application/json"),
            body,
        )
    };
    let r = group("{\"name\":\"g\",\"weight\":3.0}").await;
    assert_eq!((r.0, &r.3["weight"]), (201, &json!(3)), "{}", r.3);
    let r = group("{\"name\":\"h\",\"weight\":3.5}").await;
    json_error(&r, 400);
    assert_eq!(r.3["error"]["field"], "weight", "{}", r.3);
    // Without the token, nothing is told, not even whether a route exists.
    let anonymous = client()
        .get(obleth.admin_url("/api/v1/nothing-here"))
        .send();
    assert_eq!(anonymous.await.unwrap().status(), 401);
}

#[tokio::test]
async fn the_openapi_document_describes_responses_statuses_and_constraints() {
    let (_upstream, obleth) = start_llm().await;
    let doc = Admin::of(&obleth)
        .ok("GET", "/openapi.json", None, 200)
        .await;
    let schemas = &doc["components"]["schemas"];
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => v.clone(),
        }
    };
    // Responses have schemas of their own, with what only responses carry.
    for (path, method, status, fields) in [
        (
            "/api/v1/tenants",
            "post",
            "201",
            &["id", "created_at", "updated_at", "group_weight"][..],
        ),
        (
            "/api/v1/tenants/{id}",
            "get",
            "200",
            &["id", "created_at"][..],
        ),
        (
            "/api/v1/keys/{id}",
            "get",
            "200",
            &["id", "tenant_id", "prefix"][..],
        ),
        (
            "/api/v1/models/{name}",
            "get",
            "200",
            &["upstream_key_set", "name"][..],
        ),
        (
            "/api/v1/groups/{name}",
            "get",
            "200",
            &["name", "weight"][..],
        ),
    ] {
        let op = &doc["paths"][path][method];
        let schema = resolve(&op["responses"][status]["content"]["application/json"]["schema"]);
        for f in fields {
            assert!(
                schema["properties"].get(*f).is_some(),
                "{method} {path} {status} lacks {f}: {schema}"
            );
        }
        assert_ne!(
            schema["additionalProperties"],
            json!(false),
            "{method} {path}"
        );
    }
    // Every operation documents 401 and the store's 503; those that take
    // input document 400.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path}");
            assert!(responses.contains_key("503"), "{method} {path}");
            let takes_input = path.contains('{')
                || op.get("requestBody").is_some()
                || op["parameters"].as_array().is_some_and(|p| !p.is_empty());
            if takes_input {
                assert!(responses.contains_key("400"), "{method} {path}");
            }
        }
    }
    assert!(operations >= 31, "{operations}");
    for (path, method, status) in [
        ("/api/v1/models/{name}", "patch", "409"),
        ("/api/v1/models", "post", "409"),
        ("/api/v1/tenants/{id}", "get", "404"),
        ("/api/v1/tenants", "post", "415"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]
                .get(status)
                .is_some(),
            "{method} {path} {status}"
        );
    }
    // Constraints the server enforces.
    let tenant = &schemas["TenantSpec"]["properties"];
    assert_eq!(tenant["name"]["maxLength"], 100, "{tenant}");
    assert!(tenant["name"]["pattern"].is_string(), "{tenant}");
    assert_eq!(tenant["weight"]["minimum"], 1, "{tenant}");
    assert!(tenant["weight"]["maximum"].is_number(), "{tenant}");
    let status = resolve(&tenant["status"]["oneOf"][0]);
    assert!(status.to_string().contains("suspended"), "{status}");
    let timezone = resolve(&tenant["timezone"]);
    assert!(
        timezone["enum"].to_string().contains("Europe/Berlin"),
        "{timezone}"
    );
    let model = &schemas["ModelSpec"]["properties"];
    assert_eq!(model["name"]["maxLength"], 200, "{model}");
    assert!(model["pool"].to_string().contains("\"p\""), "{model}");
    let audit = doc["paths"]["/api/v1/audit"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = audit.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000)),
        "{limit}"
    );
}

#[tokio::test]
async fn two_admin_tokens_in_one_request_are_refused() {
    let (_upstream, obleth) = start_llm().await;
    let resp = client()
        .get(obleth.admin_url("/api/v1/tenants"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("authorization", "Bearer something-else")
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than one Authorization")),
        "{body}"
    );
}
