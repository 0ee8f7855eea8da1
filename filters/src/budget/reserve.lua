-- Reserve a request's worst-case cost against one scope, atomically.
-- KEYS: 1 bucket (hash level, ts), 2 spend (hash period, tokens, usd,
--       rtokens, rusd), 3 reservation of this request (string "tokens:usd"),
--       4 open reservations (sorted set of "id|tokens|usd" by expiry ms)
-- ARGV: 1 now ms, 2 tokens per minute (0 = unlimited), 3 estimated tokens,
--       4 estimated USD micros, 5 token budget (-1 = none), 6 USD micros
--       budget (-1 = none), 7 current period id, 8 reservation TTL seconds,
--       9 request id
-- Returns {1, remaining tokens (-1 unlimited)} admitted, {2} already
-- reserved, {0, retry after ms} rate limited, {3} term budget exhausted,
-- {4} larger than the whole bucket. Nothing is written unless admitted,
-- except that reservations past their TTL (their request never settled,
-- e.g. its process died) are released first.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {2}
end

local now, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local est, est_usd = tonumber(ARGV[3]), tonumber(ARGV[4])
local btok, busd = tonumber(ARGV[5]), tonumber(ARGV[6])
local period, ttl = ARGV[7], tonumber(ARGV[8])

local tokens, usd, rtok, rusd = spend_of(KEYS[2], period)

local leaked = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
if #leaked > 0 then
  for _, member in ipairs(leaked) do
    local _, _, t, u = string.find(member, '|(%d+)|(%d+)$')
    rtok = math.max(0, rtok - (tonumber(t) or 0))
    rusd = math.max(0, rusd - (tonumber(u) or 0))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('HSET', KEYS[2], 'rtokens', rtok, 'rusd', rusd)
end

local level = -1
if tpm > 0 then
  if est > tpm then
    return {4}
  end
  level = bucket_of(KEYS[1], tpm, now)
  if level < est then
    return {0, math.ceil((est - level) * 60000 / tpm)}
  end
end

if btok >= 0 and tokens + rtok + est > btok then
  return {3}
end
if busd >= 0 and usd + rusd + est_usd > busd then
  return {3}
end

if tpm > 0 then
  level = level - est
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', now)
end
redis.call('HSET', KEYS[2], 'period', period, 'tokens', tokens, 'usd', usd, 'rtokens', rtok + est, 'rusd', rusd + est_usd)
redis.call('SET', KEYS[3], est .. ':' .. est_usd, 'EX', ttl)
redis.call('ZADD', KEYS[4], now + ttl * 1000, ARGV[9] .. '|' .. est .. '|' .. est_usd)
return {1, math.floor(level)}
