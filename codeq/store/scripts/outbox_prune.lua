-- outbox_prune: retention for abandoned result callbacks.
-- KEYS[1] tenant prefix
-- ARGV  1 abandoned before ms  2 max to remove
-- Returns the number removed.
local ids = redis.call('ZRANGEBYSCORE', K_CB_DEAD, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('DEL', k_callback(id))
  redis.call('ZREM', K_CB_DEAD, id)
end
return #ids
