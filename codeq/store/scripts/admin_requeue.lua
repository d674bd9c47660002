-- admin_requeue: an admin ends the lease of an IN_PROGRESS task and puts it back next
-- in line in its tier, as its holder's abandon would: attempts are not refunded (the
-- attempt was made) and retryReason says ADMIN_REQUEUED. The lease token is void, so
-- the holder's late heartbeat, nack or result gets 409. A task whose cancel was
-- requested ends CANCELLED instead, as on abandon.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 by (admin identity)  4 reason  5 history limit  6 origin
-- Returns {'requeued', task fields as HGETALL} | {'cancelled', task fields}
--       | {'not_found'} | {'not_in_progress:<status>'}.
local id, now, by, reason, limit = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = k_task(id)
local f = redis.call('HMGET', key, 'status', 'command', 'priority', 'workerId', 'attempts',
  'cancelRequested')
if not f[1] then return {'not_found'} end
if f[1] ~= 'IN_PROGRESS' then return {'not_in_progress:' .. f[1]} end
local detail = {by = by, worker = f[4], attempt = tonumber(f[5])}
if reason ~= '' then detail['reason'] = reason end
if f[6] == '1' then
  detail['via'] = 'admin_requeue'
  finish_cancelled(id, key, f[2], now, detail, limit)
  return {'cancelled', redis.call('HGETALL', key)}
end
release_lease(id, f[2])
redis.call('HSET', key, 'status', 'PENDING', 'workerId', '', 'leaseUntil', '', 'leaseToken', '',
  'updatedAt', now, 'retryReason', 'ADMIN_REQUEUED')
push_ready(id, f[2], tonumber(f[3]), true, ARGV[6])
history(id, now, 'requeued_by_admin', detail, limit)
return {'requeued', redis.call('HGETALL', key)}
