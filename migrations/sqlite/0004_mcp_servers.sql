-- MCP servers tenants' agents reach through obleth, and which of them each
-- tenant may use (empty: none; tools are opt-in). auth_header is sealed
-- like models.upstream_key when OBLETH_ENCRYPTION_KEY is set.
CREATE TABLE mcp_servers (
    name          TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    transport     TEXT NOT NULL DEFAULT 'streamable_http' CHECK (transport IN ('streamable_http')),
    auth_header   TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    allowed_tools TEXT NOT NULL DEFAULT '[]',
    max_in_flight BIGINT CHECK (max_in_flight >= 1),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

ALTER TABLE tenants ADD COLUMN allowed_mcp_servers TEXT NOT NULL DEFAULT '[]';
