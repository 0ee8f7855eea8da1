//! Helpers shared by the budget and telemetry tests: metric samples that
//! must exist (an absent sample fails the test instead of reading as 0),
//! and waiting for settlement before spend is asserted. Settlement runs in
//! `logging`, after the client already has its whole response, so a test
//! that reads committed or reserved spend right after the response races
//! it: a late charge would pass a "refunded" check, and an exact positive
//! check could read the spend before it landed.
#![allow(dead_code)]

pub mod load;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{free_port, pool, Admin, MockUpstream, Obleth};

/// How long settlement may take after the response before a test fails.
pub const SETTLEMENT_DEADLINE: Duration = Duration::from_secs(15);

/// Every sample of the metric family `family` as `(labels, value)`, e.g.
/// `("{outcome=\"charged\"}", 3.0)`; `("", v)` for a family without labels.
pub async fn samples(obleth: &Obleth, family: &str) -> Vec<(String, f64)> {
    obleth
        .metrics_text()
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (labels, value) = if rest.starts_with('{') {
                let end = rest.find('}')? + 1;
                (&rest[..end], &rest[end..])
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Settlements so far, whatever their outcome (one per scope of each
/// request that reserved anything).
pub async fn settlements(obleth: &Obleth) -> u64 {
    samples(obleth, "obleth_budget_settlements_total")
        .await
        .iter()
        .map(|(_, v)| *v as u64)
        .sum()
}

/// Waits until exactly `expected` scope settlements happened and none of
/// `scopes` (admin API paths such as `/tenants/acme/budget`) holds a
/// reservation any more; returns their budget views. Fails loudly when
/// settlement does not come within [`SETTLEMENT_DEADLINE`] or when there
/// are more settlements than expected.
pub async fn until_settled(obleth: &Obleth, expected: u64, scopes: &[&str]) -> Vec<Value> {
    let admin = Admin::of(obleth);
    let deadline = Instant::now() + SETTLEMENT_DEADLINE;
    loop {
        let done = settlements(obleth).await;
        assert!(
            done <= expected,
            "{done} settlements, expected {expected}: something settled twice or unasked"
        );
        let mut views = Vec::new();
        for path in scopes {
            views.push(admin.ok("GET", path, None, 200).await);
        }
        let unreserved = views.iter().all(|v| {
            v["standing"]["reserved_tokens"] == 0 && v["standing"]["reserved_usd_micros"] == 0
        });
        if done == expected && unreserved {
            return views;
        }
        assert!(
            Instant::now() < deadline,
            "not settled within {SETTLEMENT_DEADLINE:?}: {done} of {expected} settlements, scopes {views:?}\n{}",
            obleth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat completion of `max_tokens` for model `m` with a three-word prompt.
pub fn chat(max_tokens: u64) -> Value {
    serde_json::json!({ "model": "m", "messages": [{ "role": "user", "content": "one two three" }], "max_tokens": max_tokens })
}

/// Bytes of `body` as sent: what obleth reserves for the prompt.
pub fn body_len(body: &Value) -> u64 {
    serde_json::to_vec(body).expect("json").len() as u64
}

/// Settlements with `outcome` (`charged`, `refunded`, `estimated`) so far.
pub async fn settled_as(obleth: &Obleth, outcome: &str) -> f64 {
    let sample = format!("obleth_budget_settlements_total{{outcome=\"{outcome}\"}}");
    obleth.metric(&sample).await
}

/// Tokens metered in `direction` (`input` or `output`) so far.
pub async fn tokens_metered(obleth: &Obleth, direction: &str) -> f64 {
    let sample = format!("obleth_tokens_total{{direction=\"{direction}\"}}");
    obleth.metric(&sample).await
}

/// A standing field of a budget view as a number.
pub fn standing(view: &Value, field: &str) -> u64 {
    view["standing"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no standing.{field} in {view}"))
}

/// The budget tests' configuration: one pool `p` on `upstream`, the tenant
/// `tenant` (a YAML flow map named `acme`), model `m` at $1 per million
/// input and $2 per million output tokens, the key `key` of `acme`, one
/// `llm` route, and `sections` (Redis, `budgets`, …) as given.
pub fn budget_config(upstream: &MockUpstream, tenant: &str, key: &str, sections: &str) -> String {
    format!(
        "pools:\n{}{sections}\
         seed:\n  tenants: [{tenant}]\n  models: [{{ name: m, pool: p, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }}]\n\
         \x20 keys: [{{ tenant: acme, name: k, secret: {key} }}]\n\
         routes:\n  - name: llm\n    match: {{ path: {{ prefix: /v1/ }} }}\n    llm: {{}}\n",
        pool("p", &[upstream], "")
    )
}

/// A redis-server of the test's own (empty, keeping nothing on disk), to
/// be killed and started again.
pub struct OwnRedis {
    pub child: Child,
    pub port: u16,
}

impl OwnRedis {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts it on `port`, where obleth may already be told to find it.
    pub async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        // Waits without blocking the runtime the in-process mock runs on.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnRedis {
    /// Kills it as an outage would, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
