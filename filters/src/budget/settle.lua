-- Settle a request once: commit its actual cost, release its reservation
-- and give the unused part of the estimate back to the bucket.
-- KEYS: 1 bucket, 2 spend, 3 reservation, 4 settled marker of this request,
--       5 open reservations
-- ARGV: 1 now ms, 2 tokens per minute, 3 actual tokens, 4 actual USD micros,
--       5 current period id, 6 marker TTL seconds, 7 request id
-- Returns {1} settled, {0} already settled (nothing changed).
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {0}
end

local now, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local actual, actual_usd = tonumber(ARGV[3]), tonumber(ARGV[4])
local period, ttl = ARGV[5], tonumber(ARGV[6])

local reserved, reserved_usd = 0, 0
local r = redis.call('GET', KEYS[3])
if r then
  local sep = string.find(r, ':', 1, true)
  reserved = tonumber(string.sub(r, 1, sep - 1))
  reserved_usd = tonumber(string.sub(r, sep + 1))
  redis.call('ZREM', KEYS[5], ARGV[7] .. '|' .. (r:gsub(':', '|')))
end

local tokens, usd, rtok, rusd = spend_of(KEYS[2], period)
redis.call('HSET', KEYS[2], 'period', period, 'tokens', tokens + actual, 'usd', usd + actual_usd,
  'rtokens', math.max(0, rtok - reserved), 'rusd', math.max(0, rusd - reserved_usd))

if tpm > 0 then
  local level, ts = bucket_of(KEYS[1], tpm, now)
  level = math.min(tpm, level + reserved - actual)
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', math.max(now, ts))
end

redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], '1', 'EX', ttl)
return {1}
