-- sub_renew: a subscription's heartbeat; its owner extends it to now + ttl.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 ttl ms (0 = the subscription's own ttl)  4 worker id
-- An expired subscription is gone even if the cleaner has not removed it yet.
-- Returns {'ok', expires at ms} | {'not_found'} | {'not_owner'}.
local id, now = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', k_sub(id), 'expiresAt', 'workerId', 'ttlMs', 'eventTypes')
if not f[1] or tonumber(f[1]) <= now then return {'not_found'} end
if f[2] ~= ARGV[4] then return {'not_owner'} end
local ttl = tonumber(ARGV[3])
if ttl <= 0 then ttl = tonumber(f[3]) end
local expires = now + ttl
redis.call('HSET', k_sub(id), 'expiresAt', expires, 'ttlMs', ttl)
redis.call('ZADD', K_SUBS, expires, id)
for _, cmd in ipairs(cjson.decode(f[4])) do redis.call('ZADD', k_subs_of(cmd), expires, id) end
return {'ok', expires}
