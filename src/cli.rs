//! The operator commands that call the admin API (`obleth tenant …`,
//! `obleth key …`), so common actions need no hand-written HTTP.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("OBLETH_ADMIN_TOKEN is not set")]
    NoToken,
    #[error("cannot reach the admin API at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("the admin API answered {path} with an unexpected body: {reason}")]
    Unexpected { path: String, reason: String },
}

/// A tenant as the admin API shows it; the fields the commands print are
/// named, the rest kept for `tenant create`'s full output.
#[derive(Debug, Deserialize, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// An API key as the admin API shows it (never its secret).
#[derive(Debug, Deserialize)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub prefix: String,
    #[serde(default)]
    pub disabled: bool,
    pub expires_at: Option<String>,
}

/// A key just created, with its secret shown this once.
#[derive(Debug, Deserialize)]
pub struct CreatedKey {
    pub key: Key,
    pub secret: String,
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

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, CliError> {
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
            serde_json::from_value(value).map_err(|e| CliError::Unexpected {
                path: path.to_string(),
                reason: e.to_string(),
            })
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
    ) -> Result<Tenant, CliError> {
        let body = json!({ "name": name, "group": group, "weight": weight, "tokens_per_minute": tokens_per_minute });
        self.call(reqwest::Method::POST, "/tenants", Some(body))
            .await
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, CliError> {
        self.call(reqwest::Method::GET, "/tenants", None).await
    }

    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        expires_at: Option<&str>,
    ) -> Result<CreatedKey, CliError> {
        let body = json!({ "name": name, "expires_at": expires_at });
        self.call(
            reqwest::Method::POST,
            &format!("/tenants/{tenant}/keys"),
            Some(body),
        )
        .await
    }

    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<Key>, CliError> {
        self.call(
            reqwest::Method::GET,
            &format!("/tenants/{tenant}/keys"),
            None,
        )
        .await
    }
}

/// `id  name  prefix  state  expires` lines for people.
pub fn key_table(keys: &[Key]) -> String {
    let mut out = format!(
        "{:<30} {:<20} {:<10} {:<9} {}\n",
        "ID", "NAME", "PREFIX", "STATE", "EXPIRES"
    );
    for k in keys {
        let state = if k.disabled { "disabled" } else { "active" };
        out.push_str(&format!(
            "{:<30} {:<20} {:<10} {:<9} {}\n",
            k.id,
            k.name,
            k.prefix,
            state,
            k.expires_at.as_deref().unwrap_or("never"),
        ));
    }
    out
}
