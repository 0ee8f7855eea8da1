-- A key may be held to fewer concurrent requests than its tenant.
ALTER TABLE api_keys ADD COLUMN max_in_flight BIGINT CHECK (max_in_flight >= 1);
