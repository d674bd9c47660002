-- sub_expire: the subscription cleaner's sweep: removes expired subscriptions.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 max to remove
-- Returns {removed, next expiry ms or -1}.
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', K_SUBS, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local types = redis.call('HGET', k_sub(id), 'eventTypes')
  if types then
    for _, cmd in ipairs(cjson.decode(types)) do redis.call('ZREM', k_subs_of(cmd), id) end
  end
  redis.call('ZREM', K_SUBS, id)
  redis.call('DEL', k_sub(id), k_gate(id))
end
local out = {#ids, -1}
local first = redis.call('ZRANGE', K_SUBS, 0, 0, 'WITHSCORES')
if first[2] then out[2] = tonumber(first[2]) end
return out
