//! MCP servers: the tool servers tenants' agents reach through `/mcp/{name}`,
//! each with the credential obleth injects for them (write-only, sealed at
//! rest like model keys) and the tools it may offer.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::secrets::UpstreamKeyCipher;
use super::validate::{
    base_url_regex, check_plain_name, check_range, check_tool_name, AUTH_HEADER_MAX, BASE_URL_MAX,
    IN_FLIGHT_MAX, TOOLS_MAX,
};
use super::{classify, get, get_bool, json_list, unix_ms, Store, StoreError};

const MCP_SELECT: &str = "SELECT name, url, transport, auth_header, enabled, allowed_tools,
    max_in_flight, created_at, updated_at FROM mcp_servers";

/// How obleth speaks to the server: MCP's streamable HTTP transport (the
/// only one an HTTP proxy can carry).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    #[default]
    StreamableHttp,
}

impl McpTransport {
    fn as_str(self) -> &'static str {
        match self {
            McpTransport::StreamableHttp => "streamable_http",
        }
    }
}

/// An MCP tool name.
#[derive(ToSchema)]
#[schema(as = ToolName, value_type = String, pattern = "^[A-Za-z0-9_./-]{1,128}$")]
#[allow(dead_code)]
pub struct ToolNameSchema(String);

/// Everything an operator sets on an MCP server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// The `{server}` of `/mcp/{server}`.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    )]
    pub name: String,
    /// The server's MCP endpoint, e.g. `https://tools.internal/mcp`.
    #[schema(
        max_length = 2000,
        pattern = "^https?://(?:[A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
    )]
    pub url: String,
    #[serde(default)]
    pub transport: McpTransport,
    /// `Name: value`, sent to the server on every request in place of the
    /// client's credential. Write-only; `""` clears it, absent keeps the
    /// stored one on update.
    #[serde(default, skip_serializing_if = "always")]
    #[schema(
        max_length = 8192,
        pattern = "^$|^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\\t !-~]*$",
        write_only
    )]
    pub auth_header: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The tools any tenant may use; empty: every tool the server offers.
    #[serde(default)]
    #[schema(value_type = Vec<ToolNameSchema>, max_items = 1000)]
    pub allowed_tools: Vec<String>,
    /// Concurrent requests to the server across all tenants, shared fairly
    /// (the server's admission pool); absent: unbounded.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_in_flight: Option<u32>,
}

/// Like the models' upstream key, never serialized, yet documented.
fn always(_: &Option<String>) -> bool {
    true
}

fn yes() -> bool {
    true
}

impl McpServerSpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_plain_name("name", &self.name)?;
        if self.url.len() > BASE_URL_MAX || !base_url_regex().is_some_and(|r| r.is_match(&self.url))
        {
            return Err(StoreError::invalid(
                "url",
                "must be http(s)://host[:port][/path]",
            ));
        }
        if let Some(header) = self.auth_header.as_deref().filter(|h| !h.is_empty()) {
            if header.len() > AUTH_HEADER_MAX || split_auth_header(header).is_none() {
                return Err(StoreError::invalid(
                    "auth_header",
                    format!("must be `Name: value` (a header name, then visible ASCII), at most {AUTH_HEADER_MAX} bytes"),
                ));
            }
        }
        if self.allowed_tools.len() > TOOLS_MAX {
            return Err(StoreError::invalid(
                "allowed_tools",
                format!("at most {TOOLS_MAX} tools"),
            ));
        }
        for (i, tool) in self.allowed_tools.iter().enumerate() {
            check_tool_name(&format!("allowed_tools[{i}]"), tool)?;
        }
        if let Some(n) = self.max_in_flight {
            check_range("max_in_flight", n, 1, IN_FLIGHT_MAX)?;
        }
        Ok(())
    }

    /// What the audit log may hold: never the credential.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            let set = self.auth_header.as_deref().is_some_and(|h| !h.is_empty());
            o.insert("auth_header_set".into(), serde_json::Value::Bool(set));
        }
        v
    }

    pub fn of(server: &McpServer) -> Self {
        Self {
            auth_header: None,
            ..server.spec.clone()
        }
    }
}

/// `Name: value` split into its name and its value (surrounding blanks
/// dropped), or `None` when it is not a header line.
pub fn split_auth_header(header: &str) -> Option<(&str, &str)> {
    let (name, value) = header.split_once(':')?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b);
    let value_ok = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    (!name.is_empty() && name.bytes().all(token) && value_ok).then_some((name, value.trim()))
}

/// An MCP server as stored: its spec with the credential opened (the
/// registry needs it; the API shows only whether it is set).
#[derive(Debug, Clone, PartialEq)]
pub struct McpServer {
    pub spec: McpServerSpec,
    pub created_at: i64,
    pub updated_at: i64,
}

fn server_from_row(r: &AnyRow, cipher: &UpstreamKeyCipher) -> Result<McpServer, StoreError> {
    let sealed: Option<String> = get(r, "auth_header")?;
    let transport: String = get(r, "transport")?;
    Ok(McpServer {
        spec: McpServerSpec {
            name: get(r, "name")?,
            url: get(r, "url")?,
            transport: match transport.as_str() {
                "streamable_http" => McpTransport::StreamableHttp,
                other => {
                    return Err(StoreError::invalid(
                        "transport",
                        format!("stored value {other:?} unknown"),
                    ))
                }
            },
            auth_header: sealed
                .map(|s| cipher.open(&s))
                .transpose()
                .map_err(StoreError::Crypto)?,
            enabled: get_bool(r, "enabled")?,
            allowed_tools: json_list("allowed_tools", &get::<String>(r, "allowed_tools")?)?,
            max_in_flight: get::<Option<i64>>(r, "max_in_flight")?.map(|v| v as u32),
        },
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
    })
}

impl Store {
    pub async fn mcp_servers(&self) -> Result<Vec<McpServer>, StoreError> {
        let rows = sqlx::query(&format!("{MCP_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| server_from_row(r, &self.cipher))
            .collect()
    }

    pub async fn mcp_server(&self, name: &str) -> Result<McpServer, StoreError> {
        let sql = format!("{MCP_SELECT} WHERE name = $1");
        self.find("MCP server", &sql, name, |r| {
            server_from_row(r, &self.cipher)
        })
        .await
    }

    /// Creates or replaces an MCP server. `auth_header`: `None` keeps the
    /// stored one on update, `""` clears it.
    pub async fn put_mcp_server(
        &self,
        actor: &str,
        spec: &McpServerSpec,
        create: bool,
    ) -> Result<McpServer, StoreError> {
        spec.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        let existing = sqlx::query("SELECT auth_header FROM mcp_servers WHERE name = $1")
            .bind(&spec.name)
            .fetch_optional(&mut *tx)
            .await?;
        let stored_header: Option<String> = match (&existing, create) {
            (Some(_), true) => {
                return Err(StoreError::Conflict(format!(
                    "MCP server {:?} already exists",
                    spec.name
                )))
            }
            (None, false) => {
                return Err(StoreError::NotFound(format!("MCP server {:?}", spec.name)))
            }
            _ => match &spec.auth_header {
                Some(h) if h.is_empty() => None,
                Some(h) => Some(self.cipher.seal(h).map_err(StoreError::Crypto)?),
                None => match &existing {
                    Some(row) => get(row, "auth_header")?,
                    None => None,
                },
            },
        };
        let sql = if create {
            "INSERT INTO mcp_servers (name, url, transport, auth_header, enabled, allowed_tools, max_in_flight,
               created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        } else {
            "UPDATE mcp_servers SET url = $2, transport = $3, auth_header = $4, enabled = $5, allowed_tools = $6,
               max_in_flight = $7, updated_at = $8 WHERE name = $1"
        };
        sqlx::query(sql)
            .bind(&spec.name)
            .bind(&spec.url)
            .bind(spec.transport.as_str())
            .bind(stored_header)
            .bind(spec.enabled)
            .bind(serde_json::to_string(&spec.allowed_tools).unwrap_or_else(|_| "[]".into()))
            .bind(spec.max_in_flight.map(i64::from))
            .bind(unix_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, &format!("MCP server {:?}", spec.name)))?;
        let action = if create {
            "mcp_server.create"
        } else {
            "mcp_server.update"
        };
        Self::audit(
            &mut tx,
            actor,
            action,
            "mcp_server",
            &spec.name,
            &spec.redacted(),
        )
        .await?;
        tx.commit().await?;
        self.mcp_server(&spec.name).await
    }

    pub async fn delete_mcp_server(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        self.delete(actor, "mcp_servers", "name", "mcp_server", name)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_header_is_a_header_line_and_is_never_serialized() {
        assert_eq!(
            split_auth_header("X-Tool-Token:  s3cret "),
            Some(("X-Tool-Token", "s3cret"))
        );
        assert_eq!(split_auth_header("no colon"), None);
        assert_eq!(split_auth_header("bad name: v"), None);
        assert_eq!(split_auth_header(": v"), None);
        let spec = McpServerSpec {
            name: "search".into(),
            url: "http://127.0.0.1:9/mcp".into(),
            transport: McpTransport::StreamableHttp,
            auth_header: Some("Authorization: Bearer tool-secret".into()),
            enabled: true,
            allowed_tools: vec!["web_search".into()],
            max_in_flight: None,
        };
        spec.validate().expect("valid");
        let shown = serde_json::to_string(&spec.redacted()).expect("json");
        assert!(!shown.contains("tool-secret"), "{shown}");
        assert!(shown.contains("\"auth_header_set\":true"), "{shown}");
        let bad = McpServerSpec {
            auth_header: Some("X-Token value".into()),
            ..spec
        };
        assert!(
            matches!(bad.validate(), Err(StoreError::Invalid { field, .. }) if field == "auth_header")
        );
    }
}
