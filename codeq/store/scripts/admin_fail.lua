-- admin_fail: an admin ends an IN_PROGRESS task as FAILED, as a FAILED result would:
-- the result stored, the lease cleared (its token void, so the holder's late
-- heartbeat, nack or result gets 409), the end indexed, a `failed_by_admin` timeline
-- entry, and the result callback queued when the task has a webhook. Not a dead
-- letter: the task is not in the DLQ.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 by (admin identity)  4 reason  5 error  6 result record JSON
--       7 history limit
-- Returns {'failed', 1 when a callback was queued else 0, task fields as HGETALL}
--       | {'not_found'} | {'not_in_progress:<status>'}.
local id, now = ARGV[1], tonumber(ARGV[2])
local key = k_task(id)
local f = redis.call('HMGET', key, 'status', 'command', 'workerId', 'attempts', 'webhook',
  'traceParent')
if not f[1] then return {'not_found'} end
if f[1] ~= 'IN_PROGRESS' then return {'not_in_progress:' .. f[1]} end
local detail = {by = ARGV[3], worker = f[3], attempt = tonumber(f[4])}
if ARGV[4] ~= '' then detail['reason'] = ARGV[4] end
local queued = end_with_result(id, key, now, 'FAILED', ARGV[6], ARGV[5], 'failed_by_admin',
  detail, tonumber(ARGV[7]), {f[5], f[2], f[6]})
return {'failed', queued, redis.call('HGETALL', key)}
