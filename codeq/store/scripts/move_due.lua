-- move_due: makes delayed tasks whose time has come ready, oldest first.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 max per command  3 origin
-- Returns {moved count, next due ms or -1, command of each moved task...}.
local now, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {0, -1}
for _, cmd in ipairs(redis.call('SMEMBERS', K_CMDS)) do
  local zkey = k_delayed(cmd)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(ids) do
    redis.call('ZREM', zkey, id)
    local prio = redis.call('HGET', k_task(id), 'priority')
    if prio then
      push_ready(id, cmd, tonumber(prio), false, ARGV[3])
      out[1] = out[1] + 1
      out[#out + 1] = cmd
    end
  end
  local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if out[2] < 0 or at < out[2] then out[2] = at end
  end
end
return out
