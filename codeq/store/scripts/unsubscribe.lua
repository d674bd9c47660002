-- unsubscribe: its owner removes a subscription and its indexes at once.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 worker id
-- Returns {'ok'} | {'not_found'} | {'not_owner'}.
local id, now = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', k_sub(id), 'expiresAt', 'workerId', 'eventTypes')
if not f[1] or tonumber(f[1]) <= now then return {'not_found'} end
if f[2] ~= ARGV[3] then return {'not_owner'} end
redis.call('ZREM', K_SUBS, id)
for _, cmd in ipairs(cjson.decode(f[3])) do redis.call('ZREM', k_subs_of(cmd), id) end
redis.call('DEL', k_sub(id), k_gate(id))
return {'ok'}
