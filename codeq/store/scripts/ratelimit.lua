-- ratelimit: takes `cost` tokens from one token bucket, or says how long to wait.
-- Standalone (lib.lua is not prepended): its one key is the bucket, not a tenant prefix.
-- KEYS[1] the bucket "cq:rl:{<token digest>}:<scope>", a hash: tokens, at (ms of last refill)
-- ARGV  1 now ms  2 rate (tokens per ms, > 0)  3 burst (capacity, >= 1)  4 cost (>= 1)
-- Returns {1, 0} when allowed (tokens taken), or {0, ms until enough tokens} when
-- refused (nothing written).
-- A cost above the burst passes on a full bucket and leaves it in debt, so a batch
-- larger than the burst is possible and is paid back at the configured rate.
-- The time comes in ARGV: KVRocks has no redis.replicate_commands(), so no TIME.
local key = KEYS[1]
local now, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, cost = tonumber(ARGV[3]), tonumber(ARGV[4])

local f = redis.call('HMGET', key, 'tokens', 'at')
local tokens, at = tonumber(f[1]), tonumber(f[2])
if not tokens or not at then
  tokens, at = burst, now
elseif now > at then
  -- A replica whose clock is behind the last writer's adds nothing (and takes nothing).
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end

local need = math.min(cost, burst)
if tokens < need then
  -- (less a hair, so float noise cannot round an exact wait up by one ms)
  return {0, math.ceil((need - tokens) / rate - 1e-6)}
end
tokens = tokens - cost
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', at)
-- Kept a little longer than a refill to full, so an idle bucket vanishes by itself
-- only once it would be full again anyway.
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate) + 1000)
return {1, 0}
