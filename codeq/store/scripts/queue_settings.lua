-- queue_settings: sets a command's concurrency-key settings: maxInFlightPerKey
-- (0 = no limit) and fairness ('' = oldest first, 'round_robin'). Keys that were
-- blocked and have a free slot under the new limit enter the rotations again.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 maxInFlightPerKey ('-' = unchanged)  3 fairness ('-' = unchanged)
-- Returns {maxInFlightPerKey, fairness}.
local cmd = ARGV[1]
local key = k_qsettings(cmd)
redis.call('SADD', K_CMDS, cmd)
if ARGV[2] ~= '-' then
  if tonumber(ARGV[2]) > 0 then redis.call('HSET', key, 'maxInFlightPerKey', ARGV[2])
  else redis.call('HDEL', key, 'maxInFlightPerKey') end
end
if ARGV[3] ~= '-' then
  if ARGV[3] ~= '' then redis.call('HSET', key, 'fairness', ARGV[3])
  else redis.call('HDEL', key, 'fairness') end
end
local max, fair = key_settings(cmd)
local woke = false
for _, ckey in ipairs(redis.call('SMEMBERS', k_blocked(cmd))) do
  if has_slot(cmd, ckey, max) then
    redis.call('SREM', k_blocked(cmd), ckey)
    woke = activate_tiers(cmd, ckey, fair) or woke
  end
end
if woke then announce_ready(cmd, 0, '') end
local f = redis.call('HMGET', key, 'maxInFlightPerKey', 'fairness')
return {tonumber(f[1]) or 0, f[2] or ''}
