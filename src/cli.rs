//! The operator commands that call the admin API (`obleth tenant …`,
//! `obleth key …`), so common actions need no hand-written HTTP.

use serde_json::{json, Value};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("OBLETH_ADMIN_TOKEN is not set")]
    NoToken,
    #[error("cannot reach the admin API at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
}

/// A client of one obleth admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(admin_url: &str) -> Result<Self, CliError> {
        let token = std::env::var("OBLETH_ADMIN_TOKEN").map_err(|_| CliError::NoToken)?;
        Ok(Self {
            base: format!("{}/api/v1", admin_url.trim_end_matches('/')),
            token,
            http: reqwest::Client::new(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("x-obleth-actor", "cli");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|source| CliError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            Err(CliError::Api { status, message })
        }
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        group: &str,
        weight: u32,
        tokens_per_minute: u64,
    ) -> Result<Value, CliError> {
        let body = json!({ "name": name, "group": group, "weight": weight, "tokens_per_minute": tokens_per_minute });
        self.call(reqwest::Method::POST, "/tenants", Some(body))
            .await
    }

    pub async fn list_tenants(&self) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, "/tenants", None).await
    }

    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        expires_at: Option<&str>,
    ) -> Result<Value, CliError> {
        let body = json!({ "name": name, "expires_at": expires_at });
        self.call(
            reqwest::Method::POST,
            &format!("/tenants/{tenant}/keys"),
            Some(body),
        )
        .await
    }

    pub async fn list_keys(&self, tenant: &str) -> Result<Value, CliError> {
        self.call(
            reqwest::Method::GET,
            &format!("/tenants/{tenant}/keys"),
            None,
        )
        .await
    }
}

/// `id  name  prefix  state  expires` lines for people.
pub fn key_table(keys: &Value) -> String {
    let mut out = format!(
        "{:<30} {:<20} {:<10} {:<9} {}\n",
        "ID", "NAME", "PREFIX", "STATE", "EXPIRES"
    );
    for k in keys.as_array().into_iter().flatten() {
        let state = if k["disabled"].as_bool() == Some(true) {
            "disabled"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<30} {:<20} {:<10} {:<9} {}\n",
            k["id"].as_str().unwrap_or("-"),
            k["name"].as_str().unwrap_or("-"),
            k["prefix"].as_str().unwrap_or("-"),
            state,
            k["expires_at"].as_str().unwrap_or("never"),
        ));
    }
    out
}
