-- create: stores a new task and makes it ready or delayed, in one step.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 command  3 payload  4 priority  5 maxAttempts  6 webhook
--       7 idempotency digest ('' = none)  8 idempotency TTL ms  9 now ms
--      10 visible-at ms (0 = ready now)  11 history limit  12 origin
--      13 traceParent  14 traceState  15 tenant  16 idempotency key
-- The record keeps the key's digest (idemDigest) so that retention cleanup and purge,
-- which cannot hash in Lua, can delete the idempotency key with the task.
-- Returns {'created', id} or {'existing', id, <task fields as HGETALL>}.
local id, cmd, now, visible = ARGV[1], ARGV[2], tonumber(ARGV[9]), tonumber(ARGV[10])
local limit = tonumber(ARGV[11])

if ARGV[7] ~= '' then
  local ikey = k_idem(ARGV[7])
  local existing = redis.call('GET', ikey)
  if existing then
    local fields = redis.call('HGETALL', k_task(existing))
    if #fields > 0 then return {'existing', existing, fields} end
  end
  redis.call('SET', ikey, id, 'PX', ARGV[8])
end

local key = k_task(id)
redis.call('HSET', key, 'id', id, 'command', cmd, 'payload', ARGV[3], 'priority', ARGV[4],
  'status', 'PENDING', 'attempts', 0, 'maxAttempts', ARGV[5], 'tenantId', ARGV[15],
  'createdAt', now, 'updatedAt', now, 'webhook', ARGV[6], 'traceParent', ARGV[13],
  'traceState', ARGV[14], 'idempotencyKey', ARGV[16], 'idemDigest', ARGV[7])
redis.call('SADD', K_CMDS, cmd)

if visible > now then
  redis.call('HSET', key, 'runAt', visible)
  redis.call('ZADD', k_delayed(cmd), visible, id)
  history(id, now, 'created', {runAt = visible}, limit)
else
  push_ready(id, cmd, tonumber(ARGV[4]), false, ARGV[12])
  history(id, now, 'created', nil, limit)
end
return {'created', id}
