//! The JSON-RPC messages a client POSTs to an MCP server, typed by the
//! `rmcp` crate (the MCP SDK for Rust): what is metered and what the tool
//! policy looks at.

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
use serde_json::{json, Value};

use super::super::llm_route::Rejection;

/// One JSON-RPC message of a POST.
#[derive(Debug)]
pub struct Message {
    /// The request's id; `None` for notifications and responses.
    pub id: Option<Value>,
    /// `tools/call`, `initialize`, …; `response` for the client's answer
    /// to a server request.
    pub method: String,
    /// The tool a `tools/call` names.
    pub tool: Option<String>,
    /// The tool policy refused it; it did not reach the server.
    pub refused: bool,
}

/// What one POST carried: one message, or a batch.
#[derive(Debug)]
pub struct Posted {
    pub messages: Vec<Message>,
    pub batch: bool,
}

/// The JSON-RPC error code MCP answers a call of an unknown tool with.
const INVALID_PARAMS: i64 = -32602;

impl Posted {
    /// Parses and validates a POST body: JSON, and every element an MCP
    /// client message (a request, a notification or a response).
    pub fn parse(body: &[u8]) -> Result<Self, Rejection> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Rejection::new(400, "invalid_json", format!("the body is not JSON: {e}"))
        })?;
        let (items, batch) = match value {
            Value::Array(items) if !items.is_empty() => (items, true),
            Value::Array(_) => {
                return Err(Rejection::new(
                    400,
                    "invalid_request",
                    "an empty JSON-RPC batch",
                ))
            }
            one => (vec![one], false),
        };
        let messages = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| Message::parse(item, batch.then_some(i)))
            .collect::<Result<_, _>>()?;
        Ok(Self { messages, batch })
    }

    /// The ids of the `tools/list` requests, whose results are filtered.
    pub fn tool_list_ids(&self) -> Vec<Value> {
        self.messages
            .iter()
            .filter(|m| m.method == "tools/list")
            .filter_map(|m| m.id.clone())
            .collect()
    }

    /// The answer to a POST holding a refused `tools/call`, in place of the
    /// server's: the JSON-RPC error MCP gives for an unknown tool, for each
    /// refused call, and for the other requests of a batch a note that
    /// they were not sent (a batch is forwarded whole or not at all).
    pub fn refusal(&self) -> Value {
        let answers: Vec<Value> = self
            .messages
            .iter()
            .filter_map(|m| {
                let id = m.id.clone()?;
                let (message, code) = match (&m.tool, m.refused) {
                    (Some(tool), true) => (
                        format!("Unknown tool: {tool} (not allowed for this key)"),
                        "tool_not_allowed",
                    ),
                    _ => (
                        "not sent: the batch holds a tool call this key may not make".to_string(),
                        "batch_refused",
                    ),
                };
                Some(json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": { "code": INVALID_PARAMS, "message": message, "data": { "code": code } }
                }))
            })
            .collect();
        match (self.batch, answers.as_slice()) {
            (false, [one]) => one.clone(),
            _ => Value::Array(answers),
        }
    }
}

impl Message {
    fn parse(item: Value, index: Option<usize>) -> Result<Self, Rejection> {
        let at = index.map_or(String::new(), |i| format!(" (batch element {i})"));
        let id = item.get("id").filter(|id| !id.is_null()).cloned();
        let method = item
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let typed: ClientJsonRpcMessage = serde_json::from_value(item).map_err(|e| {
            Rejection::new(
                400,
                "invalid_request",
                format!("not an MCP client message{at}: {e}"),
            )
        })?;
        let (id, tool) = match &typed {
            JsonRpcMessage::Request(r) => match &r.request {
                ClientRequest::CallToolRequest(call) => (id, Some(call.params.name.to_string())),
                _ => (id, None),
            },
            // Notifications carry no id; answers to the server carry the
            // server's request id, which is not one of the client's.
            _ => (None, None),
        };
        // A `tools/call` the SDK cannot type as one (it falls back to a
        // custom request or a notification) names no tool the policy could
        // check: it goes no further.
        if method.as_deref() == Some("tools/call") && tool.is_none() {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("a tools/call must be a request with valid params{at}"),
            ));
        }
        Ok(Self {
            id,
            method: method.unwrap_or_else(|| "response".into()),
            tool,
            refused: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_names_its_tool_and_a_notification_has_no_id() {
        let posted = Posted::parse(
            br#"[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"web_search","arguments":{}}},
                 {"jsonrpc":"2.0","method":"notifications/initialized"},
                 {"jsonrpc":"2.0","id":"a","method":"tools/list"}]"#,
        )
        .expect("valid");
        assert!(posted.batch);
        let [call, note, list] = posted.messages.as_slice() else {
            panic!("three messages: {posted:?}");
        };
        assert_eq!(
            (call.method.as_str(), call.tool.as_deref()),
            ("tools/call", Some("web_search"))
        );
        assert_eq!(
            (note.method.as_str(), note.id.as_ref()),
            ("notifications/initialized", None)
        );
        assert_eq!(list.id, Some(json!("a")));
        assert_eq!(posted.tool_list_ids(), [json!("a")]);
    }

    #[test]
    fn what_is_not_an_mcp_message_is_refused_naming_why() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
        ] {
            let refused = Posted::parse(body).expect_err("refused");
            assert_eq!(refused.status, 400, "{}", refused.message);
        }
    }

    #[test]
    fn a_refused_call_is_answered_as_an_unknown_tool() {
        let mut posted = Posted::parse(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"rm_rf"}}"#,
        )
        .expect("valid");
        posted.messages[0].refused = true;
        let answer = posted.refusal();
        assert_eq!(answer["id"], 3);
        assert_eq!(answer["error"]["code"], INVALID_PARAMS);
        assert_eq!(answer["error"]["data"]["code"], "tool_not_allowed");
    }
}
