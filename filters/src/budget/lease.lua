-- Renew one replica's lease on one scope, atomically: commit the spend it
-- settled since its last renewal, return what it holds beyond its target,
-- and grant what it asks for as far as the scope's budget and bucket allow.
-- A lease is a slice of the term budget (counted in the spend hash's
-- rtokens/rusd like a reservation) and a slice of the token bucket (taken
-- out of its level, counted in its `out`), both held by one replica.
--
-- KEYS: 1 bucket (hash level, ts, out), 2 spend (hash period, tokens, usd,
--       rtokens, rusd, reset_at), 3 per-request reservations (sorted set of
--       "id|tokens|usd" by expiry ms, now only for leases of a dead replica),
--       4 leases (hash owner -> "tokens:usd:held tokens:held usd:slice"),
--       5 lease expiries (sorted set of owners by expiry, Redis time ms),
--       6 the last renewal of this owner that was applied
-- ARGV: 1 now ms, 2 tokens per minute (0 = unlimited), 3 token budget
--       (-1 = none), 4 USD micros budget (-1 = none), 5 current period id,
--       6 lease TTL s, 7 reservation TTL s, 8 owner, 9 renewal sequence,
--       10/11 committed tokens/USD micros, 12/13 held tokens/USD micros (in
--       flight at this owner: what its lease must keep covering),
--       14/15 needed tokens/USD micros (a request waiting: granted whole or
--       not at all), 16/17 wanted headroom tokens/USD micros,
--       18 bucket tokens kept, 19 bucket tokens returned (negative: owed),
--       20 bucket tokens needed, 21 bucket headroom wanted
-- The commit and the returned bucket tokens are applied once per sequence
-- number: a renewal whose answer was lost is sent again as it was.
-- Returns {term granted tokens, term granted USD micros, bucket tokens
-- granted, bucket level after in thousandths, retry after ms (0: the bucket had the need),
-- 1 when the term budget could not cover the need}.

local now, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local btok, busd = tonumber(ARGV[3]), tonumber(ARGV[4])
local period, lease_ttl, reservation_ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local owner, seq = ARGV[8], tonumber(ARGV[9])
local ctok, cusd = tonumber(ARGV[10]), tonumber(ARGV[11])
local htok, husd = tonumber(ARGV[12]), tonumber(ARGV[13])
local ntok, nusd = tonumber(ARGV[14]), tonumber(ARGV[15])
local wtok, wusd = tonumber(ARGV[16]), tonumber(ARGV[17])
local kept, returned = tonumber(ARGV[18]), tonumber(ARGV[19])
local bneed, bwant = tonumber(ARGV[20]), tonumber(ARGV[21])

local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local s = redis.call('HMGET', KEYS[2], 'period', 'tokens', 'usd', 'rtokens', 'rusd')
local tokens, usd = tonumber(s[2]) or 0, tonumber(s[3]) or 0
if s[1] and s[1] ~= period then
  -- A new monthly period: committed spend starts again, reservations stay.
  tokens, usd = 0, 0
end
local rtok, rusd = tonumber(s[4]) or 0, tonumber(s[5]) or 0
local b = redis.call('HMGET', KEYS[1], 'level', 'ts', 'out')
local out = tonumber(b[3]) or 0

local function parse_lease(v)
  local f = {}
  for n in string.gmatch(v or '', '[^:]+') do
    f[#f + 1] = tonumber(n) or 0
  end
  return f[1] or 0, f[2] or 0, f[3] or 0, f[4] or 0, f[5] or 0
end

-- Per-request reservations past their TTL: their process died.
local leaked = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, member in ipairs(leaked) do
  local _, _, lt, lu = string.find(member, '|(%d+)|(%d+)$')
  rtok = math.max(0, rtok - (tonumber(lt) or 0))
  rusd = math.max(0, rusd - (tonumber(lu) or 0))
  local _, _, gone = string.find(member, '^lease:([^|]+)|')
  if gone then
    redis.call('HDEL', KEYS[4], 'orphan:' .. gone)
  end
end
if #leaked > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end

-- Leases of replicas that stopped renewing: the slices come back, and what
-- they last said was in flight stays reserved as long as a request may run.
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', clock)
for _, dead in ipairs(expired) do
  local gt, gu, ht, hu, sl = parse_lease(redis.call('HGET', KEYS[4], dead))
  rtok = math.max(0, rtok - gt) + ht
  rusd = math.max(0, rusd - gu) + hu
  out = math.max(0, out - sl)
  if ht > 0 or hu > 0 then
    local orphan = 'lease:' .. dead .. '|' .. ht .. '|' .. hu
    redis.call('ZADD', KEYS[3], now + reservation_ttl * 1000, orphan)
    redis.call('HSET', KEYS[4], 'orphan:' .. dead, orphan)
  end
  redis.call('HDEL', KEYS[4], dead)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', clock)
end

local gt, gu, _, _, slice = parse_lease(redis.call('HGET', KEYS[4], owner))
-- An owner renewing after its lease expired still covers what it has in
-- flight itself: the reservation left in its name is taken back.
local orphan = redis.call('HGET', KEYS[4], 'orphan:' .. owner)
if orphan then
  local _, _, ot, ou = string.find(orphan, '|(%d+)|(%d+)$')
  if redis.call('ZREM', KEYS[3], orphan) == 1 then
    rtok = math.max(0, rtok - (tonumber(ot) or 0))
    rusd = math.max(0, rusd - (tonumber(ou) or 0))
  end
  redis.call('HDEL', KEYS[4], 'orphan:' .. owner)
end
local fresh = seq > (tonumber(redis.call('GET', KEYS[6])) or 0)
if fresh then
  tokens, usd = tokens + ctok, usd + cusd
  redis.call('SET', KEYS[6], seq, 'EX', 86400)
else
  ctok, cusd, returned = 0, 0, 0
end
rtok, rusd = math.max(0, rtok - gt), math.max(0, rusd - gu)
-- What the owner may still be using while this renewal is under way.
local base_t, base_u = math.max(0, gt - ctok), math.max(0, gu - cusd)

-- One dimension of the term lease: the owner keeps what it holds, gets the
-- need whole or not at all, and a quarter of what is left at most beyond.
local function grant(limit, committed, reserved, base, held, need, want)
  local keep = math.max(held, math.min(base, held + want))
  if limit < 0 then
    return held + need + want, false
  end
  local left = limit - committed - reserved - held - need
  if left < 0 then
    return keep, need > 0
  end
  return math.max(keep, held + need + math.min(want, math.floor(left / 4))), false
end
local new_t, short_t = grant(btok, tokens, rtok, base_t, htok, ntok, wtok)
local new_u, short_u = grant(busd, usd, rusd, base_u, husd, nusd, wusd)
local exhausted = short_t or short_u
if exhausted then
  -- Refused requests take nothing: the lease keeps only what it held.
  new_t = math.max(htok, math.min(base_t, htok + wtok))
  new_u = math.max(husd, math.min(base_u, husd + wusd))
end
rtok, rusd = rtok + new_t, rusd + new_u
redis.call('HSET', KEYS[2], 'period', period, 'tokens', tokens, 'usd', usd, 'rtokens', rtok, 'rusd', rusd)

local granted, level, retry = 0, 0, 0
if tpm > 0 then
  out = math.max(0, out - slice)
  local ts = tonumber(b[2]) or now
  level = tonumber(b[1]) or (tpm - out)
  if now > ts then
    level = level + (now - ts) * tpm / 60000
  end
  level = math.min(tpm - out - kept, level + returned)
  if bneed > level then
    retry = math.ceil((bneed - level) * 60000 / tpm)
  elseif not exhausted then
    granted = bneed + math.min(bwant, math.max(0, math.floor((level - bneed) / 4)))
    level = level - granted
  end
  slice = kept + granted
  out = out + slice
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', math.max(now, ts), 'out', tostring(out))
end

if new_t > 0 or new_u > 0 or slice > 0 or htok > 0 or husd > 0 then
  redis.call('HSET', KEYS[4], owner, new_t .. ':' .. new_u .. ':' .. htok .. ':' .. husd .. ':' .. slice)
  redis.call('ZADD', KEYS[5], clock + lease_ttl * 1000, owner)
else
  redis.call('HDEL', KEYS[4], owner)
  redis.call('ZREM', KEYS[5], owner)
end
return {new_t, new_u, granted, math.floor(level * 1000), retry, exhausted and 1 or 0}
