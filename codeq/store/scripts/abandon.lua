-- abandon: the worker gives a task back untouched; it is next in line at once.
-- Attempts are not refunded.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 worker id  4 lease token  5 history limit  6 origin
-- A task whose cancel was requested ends CANCELLED instead.
-- Returns {'requeued', command} | {'cancelled'} | {error code}.
local id, now = ARGV[1], tonumber(ARGV[2])
local key = k_task(id)
local err = check_lease(key, ARGV[3], ARGV[4])
if err then return {err} end
local f = redis.call('HMGET', key, 'command', 'priority', 'cancelRequested')
if f[3] == '1' then
  finish_cancelled(id, key, f[1], now, {worker = ARGV[3], via = 'abandon'}, tonumber(ARGV[5]))
  return {'cancelled'}
end
release_lease(id, f[1])
redis.call('HSET', key, 'status', 'PENDING', 'workerId', '', 'leaseUntil', '', 'leaseToken', '',
  'updatedAt', now)
push_ready(id, f[1], tonumber(f[2]), true, ARGV[6])
history(id, now, 'abandoned', {worker = ARGV[3]}, tonumber(ARGV[5]))
return {'requeued', f[1]}
