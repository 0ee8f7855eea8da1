-- What the budget scripts share, prepended to each of them: reading one
-- scope's spend and its token bucket.

-- The spend hash at `key` as of `period`: committed tokens and USD micros
-- (zero when the hash holds another period), then reserved tokens and USD
-- micros.
local function spend_of(key, period)
  local s = redis.call('HMGET', key, 'period', 'tokens', 'usd', 'rtokens', 'rusd')
  local tokens, usd = tonumber(s[2]) or 0, tonumber(s[3]) or 0
  if s[1] and s[1] ~= period then
    -- A new monthly period: committed spend starts again, reservations stay.
    tokens, usd = 0, 0
  end
  return tokens, usd, tonumber(s[4]) or 0, tonumber(s[5]) or 0
end

-- The bucket at `key` refilled at `tpm` tokens per minute up to `now`:
-- its level, and when it was last written (`now` when never).
local function bucket_of(key, tpm, now)
  local b = redis.call('HMGET', key, 'level', 'ts')
  local level = tonumber(b[1]) or tpm
  local ts = tonumber(b[2]) or now
  if now > ts then
    level = math.min(tpm, level + (now - ts) * tpm / 60000)
  end
  return level, ts
end

