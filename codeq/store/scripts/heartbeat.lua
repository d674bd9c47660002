-- heartbeat: extends the lease of a task the caller holds.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 extend ms  4 worker id  5 lease token ('' = identity rule)
-- Returns {'ok', leaseUntil} or {error code}.
local id, now, extend = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local key = k_task(id)
local err = check_lease(key, ARGV[4], ARGV[5])
if err then return {err} end
if redis.call('HGET', key, 'cancelRequested') == '1' then return {'cancelled'} end
local until_ms = now + extend
local cmd = redis.call('HGET', key, 'command')
redis.call('HSET', key, 'leaseUntil', until_ms, 'lastHeartbeatAt', now)
redis.call('HINCRBY', key, 'heartbeats', 1)
redis.call('ZADD', k_inprog(cmd), until_ms, id)
return {'ok', until_ms}
