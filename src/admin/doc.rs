//! The parts of the OpenAPI document that handler attributes cannot state:
//! the statuses every operation shares (401, 503, and 400/413/415 where a
//! request carries input), the schemas of merge-patch bodies (the create
//! schema with nothing required and no defaults), the rule that a model has
//! exactly one of `pool` and `base_url`, that a server change names at
//! least one field, and — per request, since a reload may change them —
//! the configured pools a model may name and the pools and servers the
//! `/pools/…` paths take.

use serde_json::{json, Map, Value};

const ERROR_REF: &str = "#/components/schemas/ErrorBody";

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": ERROR_REF } } }
    })
}

/// Which create schema each merge-patch operation patches.
const PATCHES: [(&str, &str, &str); 4] = [
    ("patch_tenant", "TenantSpec", "TenantPatch"),
    ("patch_key", "KeySpec", "KeyPatch"),
    ("patch_model", "ModelSpec", "ModelPatch"),
    ("patch_mcp_server", "McpServerSpec", "McpServerPatch"),
];

/// The generated document as JSON, completed as the module doc says.
pub fn refine(api: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_else(|e| {
        tracing::error!("admin API: cannot render the OpenAPI document: {e}");
        json!({})
    });
    shared_timezone(&mut doc);
    patch_schemas(&mut doc);
    // A server change names at least one field. (utoipa 5.5's
    // `min_properties` attribute writes `maxProperties`, so it is set here.)
    if let Some(change) = doc.pointer_mut("/components/schemas/ServerChange") {
        change["minProperties"] = json!(1);
    }
    if let Some(model) = doc.pointer_mut("/components/schemas/ModelSpec") {
        model["oneOf"] = json!([
            { "required": ["pool"], "properties": { "pool": { "type": "string" } } },
            { "required": ["base_url"], "properties": { "base_url": { "type": "string" } } }
        ]);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                shared_responses(path, op);
            }
        }
    }
    doc
}

/// The document with the live configuration's pools (names, and the names
/// of their servers) as the values a model's `pool` and the pool and
/// server path parameters of `/pools/…` may take.
pub fn with_pools(doc: &Value, pools: &[(String, Vec<String>)]) -> Value {
    let mut doc = doc.clone();
    pool_parameters(&mut doc, pools);
    let pool = if pools.is_empty() {
        json!({ "type": "null", "description": "No pool is configured: give a base_url." })
    } else {
        let mut values: Vec<Value> = pools.iter().map(|(p, _)| json!(p)).collect();
        values.push(Value::Null);
        json!({
            "type": ["string", "null"],
            "enum": values,
            "description": "A pool of the live configuration that serves the model …"
        })
    };
    for schema in ["ModelSpec", "ModelPatch"] {
        if let Some(p) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/pool")) {
            *p = pool.clone();
        }
    }
    doc
}

/// The `pool` and `server` path parameters of `/api/v1/pools/…` as the
/// live pools and their servers (each pool with the names and resolved
/// addresses of its servers; the parameter takes any server of any pool,
/// and a server of another pool is a 404, as an unknown one is).
fn pool_parameters(doc: &mut Value, pools: &[(String, Vec<String>)]) {
    let mut servers: Vec<&String> = pools.iter().flat_map(|(_, s)| s).collect();
    servers.sort();
    servers.dedup();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (_, item) in paths
        .iter_mut()
        .filter(|(path, _)| path.starts_with("/api/v1/pools/"))
    {
        let parameters = item
            .as_object_mut()
            .into_iter()
            .flat_map(Map::values_mut)
            .filter_map(|op| op.get_mut("parameters").and_then(Value::as_array_mut))
            .flatten();
        for parameter in parameters {
            let values: Vec<Value> = match parameter["name"].as_str() {
                Some("pool") => pools.iter().map(|(p, _)| json!(p)).collect(),
                Some("server") => servers.iter().map(|s| json!(s)).collect(),
                _ => continue,
            };
            if !values.is_empty() {
                parameter["schema"] = json!({ "type": "string", "enum": values });
            }
        }
    }
}

/// 401 and 503 on every operation; 400 where the path, query or body
/// carries input; 413 and 415 where there is a body.
fn shared_responses(path: &str, op: &mut Value) {
    let has_body = op.get("requestBody").is_some();
    let takes_input = path.contains('{')
        || has_body
        || op["parameters"].as_array().is_some_and(|p| !p.is_empty());
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error_response(description));
    };
    add("401", "The admin token is missing or wrong");
    add(
        "503",
        "A dependency cannot answer now: the store, or Redis, ClickHouse or the scheduler where the operation uses them",
    );
    if takes_input {
        add(
            "400",
            "Invalid input: a path segment that does not decode, an unknown or invalid parameter, or a body of the wrong shape (`field` names it)",
        );
    }
    if has_body {
        add("413", "The body is over the size limit (2 MiB)");
        add(
            "415",
            "The body is not JSON (`content-type: application/json`)",
        );
    }
}

/// Moves the (long) timezone list into one component both the tenant
/// schema and its patch refer to.
fn shared_timezone(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let timezone = schemas
        .get_mut("TenantSpec")
        .and_then(|t| t.pointer_mut("/properties/timezone"))
        .map(|tz| std::mem::replace(tz, json!({ "$ref": "#/components/schemas/Timezone" })));
    if let Some(mut timezone) = timezone {
        if let Some(t) = timezone.as_object_mut() {
            t.insert(
                "description".into(),
                json!("An IANA timezone, as this machine's timezone database spells it"),
            );
        }
        schemas.insert("Timezone".into(), timezone);
    }
}

/// Adds `TenantPatch`, `KeyPatch` and `ModelPatch` and points the patch
/// operations' bodies at them.
fn patch_schemas(doc: &mut Value) {
    for (operation, create, patch) in PATCHES {
        let Some(mut schema) = doc
            .pointer(&format!("/components/schemas/{create}"))
            .cloned()
        else {
            continue;
        };
        if let Some(s) = schema.as_object_mut() {
            s.remove("required");
            s.insert(
                "description".into(),
                json!(format!(
                    "A JSON merge patch of {create}: the fields given replace the stored ones, null clears an optional one"
                )),
            );
            if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                for p in props.values_mut().filter_map(Value::as_object_mut) {
                    p.remove("default");
                }
                // Their names cannot change (a patch may only repeat it).
                if patch == "ModelPatch" || patch == "McpServerPatch" {
                    props.remove("name");
                }
            }
        }
        if patch == "ModelPatch" {
            let both = |kind: &str| {
                json!({ "required": ["pool", "base_url"],
                        "properties": { "pool": { "type": kind }, "base_url": { "type": kind } } })
            };
            schema["not"] = json!({ "anyOf": [both("string"), both("null")] });
            schema["description"] = json!("A JSON merge patch of ModelSpec (without `name`): giving a pool clears the base_url and the other way round; null clears an optional field");
        }
        if let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
        {
            schemas.insert(patch.into(), schema);
        }
        set_patch_body(doc, operation, patch);
    }
}

fn set_patch_body(doc: &mut Value, operation: &str, patch: &str) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(Map::values_mut)
        .filter(|op| op["operationId"] == operation)
    {
        op["requestBody"]["content"] = json!({
            "application/json": { "schema": { "$ref": format!("#/components/schemas/{patch}") } }
        });
        op["requestBody"]["required"] = json!(true);
    }
}
