-- stats: the counts of a tenant's queues, read only, in one round trip.
-- KEYS[1] tenant prefix
-- ARGV  1.. commands (none = every command of the tenant)
-- Returns a list of {command, ready, delayed, inProgress, dlq, paused (1|0), oldest},
-- sorted by command; ready is the sum of the ten tier lists and the keyed ready tasks; oldest is when the longest
-- waiting ready task became ready (ms; 0 when none). An unknown command counts zeros.
local cmds = {}
if #ARGV > 0 then
  for i = 1, #ARGV do cmds[#cmds + 1] = ARGV[i] end
else
  cmds = redis.call('SMEMBERS', K_CMDS)
end
table.sort(cmds)
local out = {}
for _, cmd in ipairs(cmds) do
  local ready, oldest = 0, 0
  for tier = 0, 9 do
    local key = k_ready(cmd, tier)
    local n = redis.call('LLEN', key)
    if n > 0 then
      ready = ready + n
      -- the head (oldest) of the tier: ready since its last transition or its runAt
      local f = redis.call('HMGET', k_task(redis.call('LINDEX', key, -1)), 'updatedAt', 'runAt')
      local since = math.max(tonumber(f[1]) or 0, tonumber(f[2]) or 0)
      if since > 0 and (oldest == 0 or since < oldest) then oldest = since end
    end
  end
  ready = ready + (tonumber(redis.call('GET', k_kdepth(cmd))) or 0)
  out[#out + 1] = {cmd, ready, redis.call('ZCARD', k_delayed(cmd)),
    redis.call('ZCARD', k_inprog(cmd)), redis.call('ZCARD', k_dlq(cmd)),
    redis.call('SISMEMBER', K_PAUSED, cmd), oldest}
end
return out
