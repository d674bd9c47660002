-- stats: the counts of a tenant's queues, read only, in one round trip.
-- KEYS[1] tenant prefix
-- ARGV  1.. commands (none = every command of the tenant)
-- Returns a list of {command, ready, delayed, inProgress, dlq, paused (1|0)}, sorted by
-- command; ready is the sum of the ten tier lists. An unknown command counts zeros.
local cmds = {}
if #ARGV > 0 then
  for i = 1, #ARGV do cmds[#cmds + 1] = ARGV[i] end
else
  cmds = redis.call('SMEMBERS', K_CMDS)
end
table.sort(cmds)
local out = {}
for _, cmd in ipairs(cmds) do
  local ready = 0
  for tier = 0, 9 do ready = ready + redis.call('LLEN', k_ready(cmd, tier)) end
  out[#out + 1] = {cmd, ready, redis.call('ZCARD', k_delayed(cmd)),
    redis.call('ZCARD', k_inprog(cmd)), redis.call('ZCARD', k_dlq(cmd)),
    redis.call('SISMEMBER', K_PAUSED, cmd)}
end
return out
