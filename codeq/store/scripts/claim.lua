-- claim: leases up to `count` ready tasks to a worker: highest tier first,
-- oldest first within a tier across the requested commands; paused queues skipped.
-- Within a tier, a command's keyed tasks come from its rotation of keys that have a
-- free slot (maxInFlightPerKey): a full key is not in it, so it blocks nobody; the
-- rotation's first key competes with the tier's unkeyed list by time.
-- Work per claim is bounded by tiers x commands, never by queue depth.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 lease ms  3 worker id  4 lease token prefix  5 history limit
--       6 count   7.. commands (none = every command of the tenant)
-- Returns a list of tasks, each as HGETALL fields.
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local worker, token_prefix, limit, count = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])

local cmds = {}
if #ARGV >= 7 then
  for i = 7, #ARGV do cmds[#cmds + 1] = ARGV[i] end
else
  cmds = redis.call('SMEMBERS', K_CMDS)
end
local open, keyed = {}, {}
for _, cmd in ipairs(cmds) do
  if redis.call('SISMEMBER', K_PAUSED, cmd) == 0 then
    open[#open + 1] = cmd
    -- a command with no keyed task ready has empty rotations: not looked at
    keyed[cmd] = (tonumber(redis.call('GET', k_kdepth(cmd))) or 0) > 0
  end
end

-- Lists and rotations found empty stay empty while this script runs (nothing is
-- pushed), so a batch claim looks at each empty one once, not once per task.
local empty = {}

-- The source of the next task to hand out -- a tier list, or the first key of a
-- rotation -- as {list, cmd} or {rotation, cmd, tier, key}; nil when all are empty.
local function next_source()
  for tier = 9, 0, -1 do
    local best, best_at
    for _, cmd in ipairs(open) do
      local rot = k_rotation(cmd, tier)
      local first
      if keyed[cmd] and not empty[rot] then
        first = redis.call('ZRANGE', rot, 0, 0, 'WITHSCORES')
        if not first[1] then empty[rot], first = true, nil end
      end
      local list = k_ready(cmd, tier)
      if not empty[list] then
        local head = redis.call('LINDEX', list, -1)
        if not head then
          empty[list] = true
        else
          if #open == 1 and not first then return {list, cmd} end
          local at = tonumber(redis.call('HGET', k_task(head), 'updatedAt')) or 0
          if not best or at < best_at then best, best_at = {list, cmd}, at end
        end
      end
      if first then
        local at = tonumber(first[2]) / 1000
        if not best or at < best_at then best, best_at = {rot, cmd, tier, first[1]}, at end
      end
    end
    if best then return best end
  end
  return nil
end

-- Leases the task `id` of `cmd` when it is PENDING; true when it did.
local out = {}
local function lease_task(id, cmd)
  local key = k_task(id)
  if redis.call('HGET', key, 'status') ~= 'PENDING' then return false end
  local until_ms = now + lease
  local token = token_prefix
  if count > 1 then token = token_prefix .. '.' .. #out end
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'IN_PROGRESS', 'workerId', worker,
    'leaseUntil', until_ms, 'leaseToken', token, 'updatedAt', now, 'claimedAt', now)
  redis.call('ZADD', k_inprog(cmd), until_ms, id)
  history(id, now, 'claimed', {worker = worker, attempt = attempts, leaseUntil = until_ms}, limit)
  out[#out + 1] = redis.call('HGETALL', key)
  return true
end

-- Takes the next task of a key: a key left full by it leaves every rotation of the
-- command (blocked until a lease of it ends); one with more ready tasks in the tier
-- takes its new place in the rotation; one without leaves the tier's rotation.
local function claim_keyed(rot, cmd, tier, ckey)
  local max, fair = key_settings(cmd)
  if not has_slot(cmd, ckey, max) then  -- the limit was lowered since it entered
    redis.call('ZREM', rot, ckey)
    redis.call('SADD', k_blocked(cmd), ckey)
    return
  end
  local list = k_kready(cmd, tier, ckey)
  local id = redis.call('RPOP', list)
  if not id then
    redis.call('ZREM', rot, ckey)
    return
  end
  redis.call('DECR', k_kdepth(cmd))
  if lease_task(id, cmd) then
    local n = redis.call('HINCRBY', k_inflight(cmd), ckey, 1)
    if max > 0 and n >= max then
      for t = 0, 9 do redis.call('ZREM', k_rotation(cmd, t), ckey) end
      redis.call('SADD', k_blocked(cmd), ckey)
      return
    end
  end
  if redis.call('LLEN', list) > 0 then
    redis.call('ZADD', rot, rotation_score(cmd, tier, ckey, fair), ckey)
  else
    redis.call('ZREM', rot, ckey)
  end
end

while #out < count do
  local source = next_source()
  if not source then break end
  if source[3] then
    claim_keyed(source[1], source[2], source[3], source[4])
  else
    lease_task(redis.call('RPOP', source[1]), source[2])
  end
end
return out
