-- sub_counts: the live subscriptions of each command that ever had one (read only;
-- the queue gauges read it at scrape time).
-- KEYS[1] tenant prefix
-- ARGV  1 now ms
-- Returns {command, count, command, count...}.
local out = {}
for _, cmd in ipairs(redis.call('SMEMBERS', K_SUBCMDS)) do
  out[#out + 1] = cmd
  out[#out + 1] = redis.call('ZCOUNT', k_subs_of(cmd), '(' .. ARGV[1], '+inf')
end
return out
