-- What an MCP call was (empty on LLM rows): the server, the JSON-RPC
-- method and, for tools/call, the tool. Applied when mcp_tool is missing,
-- as 0002 is.
ALTER TABLE usage ADD COLUMN mcp_server String DEFAULT '', ADD COLUMN mcp_method String DEFAULT '', ADD COLUMN mcp_tool String DEFAULT ''
