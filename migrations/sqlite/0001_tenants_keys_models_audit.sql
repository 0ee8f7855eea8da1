-- Tenants grouped for fair share, their API keys, the models LLM routes
-- serve, and the audit trail of every change. Times are Unix milliseconds.

CREATE TABLE fairshare_groups (
    name        TEXT PRIMARY KEY,
    weight      BIGINT NOT NULL DEFAULT 100 CHECK (weight >= 1),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE tenants (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    group_name        TEXT NOT NULL REFERENCES fairshare_groups (name),
    weight            BIGINT NOT NULL DEFAULT 100 CHECK (weight >= 1),
    tokens_per_minute BIGINT NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    max_in_flight     BIGINT CHECK (max_in_flight >= 1),
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    timezone          TEXT NOT NULL DEFAULT 'UTC',
    active_from       BIGINT,
    active_until      BIGINT,
    weekly_windows    TEXT NOT NULL DEFAULT '[]',
    budget_tokens     BIGINT CHECK (budget_tokens >= 0),
    budget_usd        REAL CHECK (budget_usd >= 0),
    budget_period     TEXT NOT NULL DEFAULT 'lifetime' CHECK (budget_period IN ('lifetime', 'monthly')),
    allowed_models    TEXT NOT NULL DEFAULT '[]',
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    prefix            TEXT NOT NULL,
    hash              TEXT NOT NULL UNIQUE,
    disabled          INTEGER NOT NULL DEFAULT 0,
    weight            BIGINT NOT NULL DEFAULT 100 CHECK (weight >= 1),
    expires_at        BIGINT,
    tokens_per_minute BIGINT CHECK (tokens_per_minute >= 0),
    budget_tokens     BIGINT CHECK (budget_tokens >= 0),
    budget_usd        REAL CHECK (budget_usd >= 0),
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE models (
    name                  TEXT PRIMARY KEY,
    aliases               TEXT NOT NULL DEFAULT '[]',
    pool                  TEXT,
    base_url              TEXT,
    upstream_model        TEXT NOT NULL,
    upstream_key          TEXT,
    input_cost_per_token  REAL NOT NULL DEFAULT 0 CHECK (input_cost_per_token >= 0),
    output_cost_per_token REAL NOT NULL DEFAULT 0 CHECK (output_cost_per_token >= 0),
    max_in_flight         BIGINT NOT NULL DEFAULT 16 CHECK (max_in_flight >= 1),
    admission_weight      BIGINT NOT NULL DEFAULT 1 CHECK (admission_weight >= 1),
    context_window        BIGINT,
    enabled               INTEGER NOT NULL DEFAULT 1,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    CHECK (pool IS NOT NULL OR base_url IS NOT NULL)
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, id);

-- Tenants created without a group join this one.
INSERT INTO fairshare_groups (name, weight, created_at, updated_at) VALUES ('default', 100, 0, 0);
