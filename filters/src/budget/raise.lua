-- Raise a scope's committed spend to at least what the usage ledger holds
-- for the current period: restores spend Redis lost (a flush, a restart
-- without persistence) and never lowers it, so running it when nothing was
-- lost changes nothing.
-- KEYS: 1 spend
-- ARGV: 1 current period id, 2 ledger tokens, 3 ledger USD micros, 4 the
--       ledger's start (Unix ms): a reset after it makes the ledger stale
-- Returns 1 when it raised the spend, 0 otherwise.
local s = redis.call('HMGET', KEYS[1], 'period', 'tokens', 'usd', 'reset_at')
if (tonumber(s[4]) or 0) > tonumber(ARGV[4]) then
  return 0
end
local tokens, usd = tonumber(s[2]) or 0, tonumber(s[3]) or 0
if s[1] and s[1] ~= ARGV[1] then
  tokens, usd = 0, 0
end
local ltok, lusd = tonumber(ARGV[2]), tonumber(ARGV[3])
if tokens >= ltok and usd >= lusd then
  return 0
end
redis.call('HSET', KEYS[1], 'period', ARGV[1], 'tokens', math.max(tokens, ltok), 'usd', math.max(usd, lusd))
return 1
