-- cancel: a producer cancels a task.
--   PENDING (ready or delayed): out of its queue, CANCELLED, terminal (retention index).
--   IN_PROGRESS: marked cancelRequested; the holder learns it from its next heartbeat or
--   result (409), and its nack or abandon -- or the lease expiry -- ends it as CANCELLED.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 by (producer identity)  4 reason  5 history limit
-- Returns {'cancelled', fields} | {'cancel_requested', fields} | {'not_found'}
--       | {'terminal', status}.
local id, now, by, reason, limit = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = k_task(id)
local f = redis.call('HMGET', key, 'status', 'command', 'priority', 'cancelRequested',
  'concurrencyKey')
local status, cmd = f[1], f[2]
if not status then return {'not_found'} end
local detail = {by = by}
if reason ~= '' then detail['reason'] = reason end
if status == 'PENDING' then
  if redis.call('ZREM', k_delayed(cmd), id) == 1 then
    detail['from'] = 'delayed'
  elseif f[5] and f[5] ~= '' then
    unready_keyed(id, cmd, f[3], f[5])
    detail['from'] = 'ready'
  else
    redis.call('LREM', k_ready(cmd, f[3]), 0, id)
    detail['from'] = 'ready'
  end
  finish_cancelled(id, key, cmd, now, detail, limit)
  return {'cancelled', redis.call('HGETALL', key)}
end
if status == 'IN_PROGRESS' then
  if f[4] ~= '1' then
    redis.call('HSET', key, 'cancelRequested', 1, 'cancelRequestedAt', now, 'updatedAt', now)
    history(id, now, 'cancel_requested', detail, limit)
  end
  return {'cancel_requested', redis.call('HGETALL', key)}
end
return {'terminal', status}
