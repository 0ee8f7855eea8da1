-- Whether the row is a request's completion or what its intent became
-- when the process died before the completion was logged ('crashed': the
-- tokens are the reservation). Applied when the column is missing
-- (ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS).
ALTER TABLE usage ADD COLUMN outcome String DEFAULT 'completed'
