-- purge: deletes a command's waiting tasks -- ready (every tier) and delayed -- with
-- their records, timelines and idempotency keys. In-progress and dead-lettered tasks
-- are never touched. Bounded: at most `max` queue entries per call; the caller repeats
-- while more may remain.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 most queue entries to take
-- Returns {tasks deleted, 1 if more may remain else 0}.
local cmd, max = ARGV[1], tonumber(ARGV[2])
local purged, taken = 0, 0

local function purge(id)
  local key = k_task(id)
  local f = redis.call('HMGET', key, 'status', 'idemDigest')
  -- a ready entry whose task is no longer PENDING is stale (claims skip it): drop only it
  if f[1] == 'PENDING' then
    delete_task(id, key, f[2])
    purged = purged + 1
  end
end

for tier = 0, 9 do
  local list = k_ready(cmd, tier)
  while taken < max do
    local id = redis.call('RPOP', list)
    if not id then break end
    taken = taken + 1
    purge(id)
  end
end
-- keyed ready tasks: the keys of each tier's rotation, and the blocked keys
local ckeys = redis.call('SMEMBERS', k_blocked(cmd))
for tier = 0, 9 do
  for _, ckey in ipairs(redis.call('ZRANGE', k_rotation(cmd, tier), 0, -1)) do
    ckeys[#ckeys + 1] = ckey
  end
end
for _, ckey in ipairs(ckeys) do
  for tier = 0, 9 do
    local list = k_kready(cmd, tier, ckey)
    while taken < max do
      local id = redis.call('RPOP', list)
      if not id then
        redis.call('ZREM', k_rotation(cmd, tier), ckey)
        break
      end
      redis.call('DECR', k_kdepth(cmd))
      taken = taken + 1
      purge(id)
    end
  end
end
if taken < max then
  local zkey = k_delayed(cmd)
  for _, id in ipairs(redis.call('ZRANGE', zkey, 0, max - taken - 1)) do
    redis.call('ZREM', zkey, id)
    taken = taken + 1
    purge(id)
  end
end
if taken >= max then return {purged, 1} end
return {purged, 0}
