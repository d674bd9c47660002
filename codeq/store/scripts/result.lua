-- result: records a task's terminal outcome, exactly once.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 worker id  4 lease token  5 status (COMPLETED|FAILED)
--       6 result JSON  7 error  8 history limit
-- Queues the result callback when the task has a webhook.
-- Returns {'ok', 1 when a callback was queued else 0, command, createdAt ms} | {error code}.
local id, now, status = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local key = k_task(id)
local err = check_lease(key, ARGV[3], ARGV[4])
if err then return {err} end
if redis.call('HGET', key, 'cancelRequested') == '1' then return {'cancelled'} end
local task = redis.call('HMGET', key, 'command', 'createdAt')
local cmd = task[1]
redis.call('ZREM', k_inprog(cmd), id)
redis.call('HSET', key, 'status', status, 'error', ARGV[7], 'leaseUntil', '', 'leaseToken', '',
  'updatedAt', now, 'completedAt', now)
redis.call('SET', k_result(id), ARGV[6])
redis.call('ZADD', K_RET, now, id)
local detail = {worker = ARGV[3]}
if ARGV[7] ~= '' then detail['error'] = ARGV[7] end
history(id, now, string.lower(status), detail, tonumber(ARGV[8]))
local queued = enqueue_callback(id, key, now, ARGV[6]) and 1 or 0
return {'ok', queued, cmd, task[2]}
