-- One row per LLM request. ReplacingMergeTree collapses rows with the same
-- sorting key (tenant, time, request_id, record_id), so a record inserted
-- twice counts once after merges (and at once with FINAL), while requests
-- that share a client-chosen request id stay apart; the shipper's batch
-- ledger (`batch`) keeps duplicates from being inserted in the first place. Works on
-- ClickHouse 18.16 and current releases (no DateTime64, no TTL clause:
-- retention drops whole day partitions).
CREATE TABLE IF NOT EXISTS usage (
    request_id String,
    record_id String,
    time DateTime,
    time_ms UInt64,
    tenant String,
    key String,
    model String,
    route String,
    admission String,
    queue_wait_ms UInt32,
    ttfb_ms UInt32,
    total_ms UInt32,
    status UInt16,
    input_tokens UInt64,
    output_tokens UInt64,
    estimated UInt8,
    cost_usd Float64,
    upstream String,
    replica String,
    batch String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(time)
ORDER BY (tenant, time, request_id, record_id);

-- Daily totals per tenant and model, kept up to date on every insert.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (tenant, model, day)
AS SELECT
    toDate(time) AS day,
    tenant,
    model,
    count() AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd
FROM usage
GROUP BY day, tenant, model;
