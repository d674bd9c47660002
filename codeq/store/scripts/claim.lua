-- claim: leases up to `count` ready tasks to a worker: highest tier first,
-- oldest first within a tier across the requested commands; paused queues skipped.
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
local open = {}
for _, cmd in ipairs(cmds) do
  if redis.call('SISMEMBER', K_PAUSED, cmd) == 0 then open[#open + 1] = cmd end
end

-- Lists found empty stay empty while this script runs (nothing is pushed), so a
-- batch claim looks at each empty tier once, not once per task it hands out.
local empty = {}

-- The list holding the next task to hand out, or nil when all are empty.
local function next_list()
  for tier = 9, 0, -1 do
    local best, best_at
    for _, cmd in ipairs(open) do
      local list = k_ready(cmd, tier)
      if not empty[list] then
        local head = redis.call('LINDEX', list, -1)
        if not head then
          empty[list] = true
        else
          if #open == 1 then return list, cmd end
          local at = tonumber(redis.call('HGET', k_task(head), 'updatedAt')) or 0
          if not best or at < best_at then best, best_at = {list, cmd}, at end
        end
      end
    end
    if best then return best[1], best[2] end
  end
  return nil
end

local out = {}
while #out < count do
  local list, cmd = next_list()
  if not list then break end
  local id = redis.call('RPOP', list)
  local key = k_task(id)
  if redis.call('HGET', key, 'status') == 'PENDING' then
    local until_ms = now + lease
    local token = token_prefix
    if count > 1 then token = token_prefix .. '.' .. #out end
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'status', 'IN_PROGRESS', 'workerId', worker,
      'leaseUntil', until_ms, 'leaseToken', token, 'updatedAt', now, 'claimedAt', now)
    redis.call('ZADD', k_inprog(cmd), until_ms, id)
    history(id, now, 'claimed', {worker = worker, attempt = attempts, leaseUntil = until_ms}, limit)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
