-- Settle a request once: commit its actual cost, release its reservation
-- and give the unused part of the estimate back to the bucket.
-- KEYS: 1 bucket, 2 spend, 3 reservation, 4 settled marker of this request,
--       5 open reservations
-- ARGV: 1 now ms, 2 tokens per minute, 3 actual tokens, 4 actual USD micros,
--       5 current period id, 6 marker TTL seconds, 7 request id
-- Returns {1} settled, {0} already settled (nothing changed).
local now, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local actual, actual_usd = tonumber(ARGV[3]), tonumber(ARGV[4])
local period, ttl = ARGV[5], tonumber(ARGV[6])

if redis.call('EXISTS', KEYS[4]) == 1 then
  return {0}
end

local reserved, reserved_usd = 0, 0
local r = redis.call('GET', KEYS[3])
if r then
  local sep = string.find(r, ':', 1, true)
  reserved = tonumber(string.sub(r, 1, sep - 1))
  reserved_usd = tonumber(string.sub(r, sep + 1))
  redis.call('ZREM', KEYS[5], ARGV[7] .. '|' .. (r:gsub(':', '|')))
end

local s = redis.call('HMGET', KEYS[2], 'period', 'tokens', 'usd', 'rtokens', 'rusd')
local tokens, usd = tonumber(s[2]) or 0, tonumber(s[3]) or 0
local rtok, rusd = tonumber(s[4]) or 0, tonumber(s[5]) or 0
if s[1] and s[1] ~= period then
  tokens, usd = 0, 0
end
redis.call('HSET', KEYS[2], 'period', period, 'tokens', tokens + actual, 'usd', usd + actual_usd,
  'rtokens', math.max(0, rtok - reserved), 'rusd', math.max(0, rusd - reserved_usd))

if tpm > 0 then
  local b = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local level = tonumber(b[1]) or tpm
  local ts = tonumber(b[2]) or now
  if now > ts then
    level = math.min(tpm, level + (now - ts) * tpm / 60000)
  end
  level = math.min(tpm, level + reserved - actual)
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', math.max(now, ts))
end

redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], '1', 'EX', ttl)
return {1}
