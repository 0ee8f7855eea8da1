//! Runtime server state through the admin API (HAProxy's `set server …
//! state ready|drain|maint` and `set server … weight`), observed through
//! the real binary: which mock server answered, how often the health
//! checks reached a server, the pools listing, the metrics, the audit log
//! and a SIGHUP reload.

mod common;
mod edge_kit;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use edge_kit::*;
use serde_json::{json, Value};

/// Which server answered each of `n` quick requests.
async fn tally(obleth: &Obleth, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = c.get(obleth.url("/bench")).send().await.expect("response");
        assert_eq!(r.status(), 200, "request {i}");
        *counts.entry(served_by(&r)).or_insert(0) += 1;
    }
    counts
}

/// `PUT /pools/{pool}/servers/{server}` with `body`, expecting 200; the
/// server as the answer shows it.
async fn set_server(admin: &Admin, pool: &str, server: &MockUpstream, body: Value) -> Value {
    admin
        .put(&format!("/pools/{pool}/servers/{}", server.addr), body, 200)
        .await
}

/// The server at `addr` in the pools listing.
async fn listed(admin: &Admin, pool: &str, addr: std::net::SocketAddr) -> Value {
    let pools = admin.ok("GET", "/pools", None, 200).await;
    let pool = pools
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool))
        .unwrap_or_else(|| panic!("no pool {pool} in {pools}"));
    pool["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no server {addr} in {pool}"))
        .clone()
}

fn state_sample(pool: &str, server: &MockUpstream, state: &str) -> String {
    format!(
        "obleth_upstream_server_state{{pool=\"{pool}\",server=\"{}\",state=\"{state}\"}}",
        server.addr
    )
}

#[tokio::test]
async fn drain_moves_new_traffic_off_a_server_while_its_slow_request_finishes() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "").await;
    let admin = Admin::of(&obleth);
    let slow = slow_request_in_flight(&obleth, 1500).await;
    wait_until("the slow request to reach a server", || async {
        a.requests() + b.requests() == 1
    })
    .await;
    let (busy, busy_name, idle) = if a.requests() == 1 {
        (&a, "a", &b)
    } else {
        (&b, "b", &a)
    };

    let shown = set_server(&admin, "p", busy, json!({ "state": "drain" })).await;
    assert_eq!(shown["state"], "drain", "{shown}");
    assert_eq!(
        shown["in_flight"], 1,
        "the slow request is still on it: {shown}"
    );
    assert_eq!(shown["in_rotation"], false, "{shown}");
    assert_eq!(obleth.metric(&state_sample("p", busy, "drain")).await, 1.0);
    assert_eq!(obleth.metric(&state_sample("p", busy, "ready")).await, 0.0);

    let counts = tally(&obleth, 20).await;
    assert_eq!(
        counts.get(busy_name),
        None,
        "drained server got new requests: {counts:?}"
    );
    let slow = slow
        .await
        .expect("joined")
        .expect("the slow request completes");
    assert_eq!(slow.status(), 200);
    assert_eq!(served_by(&slow), busy_name);
    assert_eq!(listed(&admin, "p", busy.addr).await["in_flight"], 0);

    // Ready again: back in rotation at once (no health checks to wait for).
    set_server(&admin, "p", busy, json!({ "state": "ready" })).await;
    let counts = tally(&obleth, 20).await;
    assert_eq!(counts.get(busy_name), Some(&10), "{counts:?}");
    assert!(idle.requests() >= 10);

    // Without the LLM plane there is no audit log: the change is logged.
    let log = obleth.stderr();
    assert!(
        log.contains("server state changed through the admin API")
            && log.contains("actor=test-suite")
            && log.contains(
                r#"before={"state":"ready","weight":1} after={"state":"drain","weight":1}"#
            ),
        "{log}"
    );
}

#[tokio::test]
async fn health_checks_go_on_while_drained_stop_in_maint_and_ready_waits_for_them() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(
        &[&a, &b],
        "health_check: { path: /health, interval: 100ms, timeout: 500ms, rise: 2, fall: 2 }",
    )
    .await;
    let admin = Admin::of(&obleth);
    let healthy_b = healthy("p", b.addr);

    set_server(&admin, "p", &b, json!({ "state": "drain" })).await;
    let counts = tally(&obleth, 10).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    let probes = b.requests();
    wait_until("health checks of the drained server", || async {
        b.requests() >= probes + 3
    })
    .await;
    assert_eq!(obleth.metric(&healthy_b).await, 1.0);

    // Maintenance: no checks reach it, and it counts as down.
    let shown = set_server(&admin, "p", &b, json!({ "state": "maint" })).await;
    assert_eq!(shown["health"], "ejected", "{shown}");
    assert_eq!(obleth.metric(&healthy_b).await, 0.0);
    tokio::time::sleep(Duration::from_millis(600)).await; // a probe under way ends
    let probes = b.requests();
    tokio::time::sleep(Duration::from_millis(1000)).await; // ten intervals
    assert_eq!(b.requests(), probes, "b was checked while in maint");
    let counts = tally(&obleth, 10).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");

    // Ready: the checks resume, and `rise` passes bring it back.
    let shown = set_server(&admin, "p", &b, json!({ "state": "ready" })).await;
    assert_eq!(shown["state"], "ready", "{shown}");
    wait_sample(&obleth, &healthy_b, 1.0).await;
    assert!(b.requests() >= probes + 2, "b came back without checks");
    let counts = tally(&obleth, 10).await;
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    assert_eq!(listed(&admin, "p", b.addr).await["in_rotation"], true);
}

#[tokio::test]
async fn weight_changes_shift_the_round_robin_share_at_once() {
    let (a, b) = (mock("a").await, mock("b").await);
    let obleth = proxy_to(&[&a, &b], "").await;
    let admin = Admin::of(&obleth);

    let shown = set_server(&admin, "p", &a, json!({ "weight": 3 })).await;
    assert_eq!(shown["weight"], 3, "{shown}");
    assert_eq!(shown["configured_weight"], 1, "{shown}");
    assert_eq!(shown["state"], "ready", "{shown}");
    let weight_a = format!(
        "obleth_upstream_server_weight{{pool=\"p\",server=\"{}\"}}",
        a.addr
    );
    assert_eq!(obleth.metric(&weight_a).await, 3.0);
    let counts = tally(&obleth, 80).await;
    assert_eq!((counts["a"], counts["b"]), (60, 20), "{counts:?}");

    // Weight 0: no new requests, as drain, while the state stays ready.
    let shown = set_server(&admin, "p", &a, json!({ "weight": 0 })).await;
    assert_eq!(shown["state"], "ready", "{shown}");
    assert_eq!(shown["in_rotation"], false, "{shown}");
    let counts = tally(&obleth, 10).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");

    // State and weight in one change.
    set_server(&admin, "p", &a, json!({ "state": "drain", "weight": 1 })).await;
    let counts = tally(&obleth, 10).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");
    set_server(&admin, "p", &a, json!({ "state": "ready" })).await;
    let counts = tally(&obleth, 40).await;
    assert_eq!((counts["a"], counts["b"]), (20, 20), "{counts:?}");
}

#[tokio::test]
async fn server_state_survives_a_sighup_reload_unless_the_file_changes_the_weight() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let config = |servers: &str| {
        format!(
            "pools:\n  - name: p\n    servers:\n{servers}{}",
            catch_all("p")
        )
    };
    let line = |m: &MockUpstream, weight: u32| {
        format!("      - {{ address: '{}', weight: {weight} }}\n", m.addr)
    };
    let obleth = Obleth::start(&config(&(line(&a, 1) + &line(&b, 1)))).await;
    let admin = Admin::of(&obleth);
    set_server(&admin, "p", &a, json!({ "weight": 3 })).await;
    set_server(&admin, "p", &b, json!({ "state": "drain" })).await;

    // A reload that adds a server: a keeps its weight, b its state.
    obleth.reload(&config(&(line(&a, 1) + &line(&b, 1) + &line(&c, 1))));
    wait_reloaded(&obleth, 1.0).await;
    let shown = listed(&admin, "p", a.addr).await;
    assert_eq!(
        (shown["weight"].clone(), shown["configured_weight"].clone()),
        (json!(3), json!(1)),
        "{shown}"
    );
    assert_eq!(listed(&admin, "p", b.addr).await["state"], "drain");
    let counts = tally(&obleth, 80).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    // (Round robin hands the drained server's turns to the next one.)
    assert!(
        counts["c"] >= 10 && counts["a"] >= 3 * counts["c"],
        "{counts:?}"
    );

    // A reload that changes a's weight in the file: the file's weight
    // applies; b stays drained.
    obleth.reload(&config(&(line(&a, 2) + &line(&b, 1) + &line(&c, 1))));
    wait_reloaded(&obleth, 2.0).await;
    let shown = listed(&admin, "p", a.addr).await;
    assert_eq!(
        (shown["weight"].clone(), shown["configured_weight"].clone()),
        (json!(2), json!(2)),
        "{shown}"
    );
    assert_eq!(listed(&admin, "p", b.addr).await["state"], "drain");
}

#[tokio::test]
async fn with_the_llm_plane_a_change_is_in_the_audit_log_and_the_listing() {
    let upstream = mock("vllm").await;
    let config = format!(
        "pools:\n{}routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[&upstream], "")
    );
    let obleth = Obleth::start(&config).await;
    let admin = Admin::of(&obleth);
    set_server(
        &admin,
        "p",
        &upstream,
        json!({ "state": "maint", "weight": 4 }),
    )
    .await;
    // The same setting again changes nothing and records nothing.
    set_server(&admin, "p", &upstream, json!({ "state": "maint" })).await;

    let rows = admin
        .ok("GET", "/audit?entity_type=server", None, 200)
        .await;
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["actor"], "test-suite");
    assert_eq!(row["action"], "server.update");
    assert_eq!(row["entity_id"], format!("p/{}", upstream.addr));
    assert_eq!(
        row["detail"],
        json!({ "before": { "state": "ready", "weight": 1 }, "after": { "state": "maint", "weight": 4 } })
    );
    let shown = listed(&admin, "p", upstream.addr).await;
    assert_eq!(
        (shown["state"].clone(), shown["weight"].clone()),
        (json!("maint"), json!(4)),
        "{shown}"
    );
    let doc = admin.ok("GET", "/openapi.json", None, 200).await;
    assert!(doc["paths"]["/api/v1/pools/{pool}/servers/{server}"]["put"].is_object());
    assert!(
        doc["paths"]["/api/v1/tenants"].is_object(),
        "the LLM plane's resources stay"
    );
}

#[tokio::test]
async fn bad_changes_are_400_unknown_pools_and_servers_404_and_no_token_401() {
    let a = mock("a").await;
    let obleth = proxy_to(&[&a], "").await;
    let admin = Admin::of(&obleth);
    let path = format!("/pools/p/servers/{}", a.addr);
    for (body, field) in [
        (json!({}), None),
        (json!({ "state": "off" }), Some("state")),
        (json!({ "state": null }), Some("state")),
        (json!({ "weight": 1001 }), Some("weight")),
        (json!({ "weight": -1 }), Some("weight")),
        (json!({ "weight": 1.5 }), Some("weight")),
        (json!({ "state": "drain", "colour": "red" }), None),
        (json!(["drain"]), None),
    ] {
        let e = admin.put(&path, body.clone(), 400).await;
        if let Some(field) = field {
            assert_eq!(e["error"]["field"], field, "{body}: {e}");
        }
        assert!(e["error"]["message"].is_string(), "{body}: {e}");
    }
    assert_eq!(
        listed(&admin, "p", a.addr).await["state"],
        "ready",
        "nothing changed"
    );

    let drain = json!({ "state": "drain" });
    admin
        .put("/pools/nope/servers/127.0.0.1:1", drain.clone(), 404)
        .await;
    admin
        .put("/pools/p/servers/127.0.0.1:1", drain.clone(), 404)
        .await;
    admin.ok("GET", "/pools/nope", None, 404).await;
    let one = admin.ok("GET", "/pools/p", None, 200).await;
    assert_eq!(one["servers"][0]["address"], a.addr.to_string(), "{one}");

    let c = client();
    let unauthenticated = [
        c.get(obleth.admin_url("/api/v1/pools")),
        c.put(obleth.admin_url(&format!("/api/v1{path}")))
            .json(&drain),
        c.put(obleth.admin_url(&format!("/api/v1{path}")))
            .bearer_auth("wrong")
            .json(&drain),
    ];
    for req in unauthenticated {
        assert_eq!(req.send().await.expect("answer").status(), 401);
    }
    assert_eq!(listed(&admin, "p", a.addr).await["state"], "ready");
}
