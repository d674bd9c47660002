-- nack: the worker gives a task back as failed; it is retried after a delay or,
-- past maxAttempts, dead-lettered.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 worker id  4 lease token  5 delay override ms (-1 = policy)
--       6 policy  7 base ms  8 max ms  9 random [0,1)  10 reason  11 history limit  12 origin
-- A task whose cancel was requested ends CANCELLED instead. The reason (else NACKED) is
-- kept as lastError, so a dead-lettered task tells why it failed.
-- Returns {'requeued', delay ms, command} | {'dead_lettered', command, createdAt ms}
-- | {'cancelled'} | {error code}.
local id, now = ARGV[1], tonumber(ARGV[2])
local key = k_task(id)
local err = check_lease(key, ARGV[3], ARGV[4])
if err then return {err} end
local f = redis.call('HMGET', key, 'command', 'attempts', 'cancelRequested')
local limit = tonumber(ARGV[11])
if f[3] == '1' then
  finish_cancelled(id, key, f[1], now, {worker = ARGV[3], via = 'nack'}, limit)
  return {'cancelled'}
end
local override, max = tonumber(ARGV[5]), tonumber(ARGV[8])
local delay
if override >= 0 then
  delay = math.min(override, max)
else
  delay = backoff(ARGV[6], tonumber(ARGV[7]), max, tonumber(f[2]), tonumber(ARGV[9]))
end
redis.call('HSET', key, 'lastError', ARGV[10] ~= '' and ARGV[10] or 'NACKED')
history(id, now, 'nacked', {reason = ARGV[10], worker = ARGV[3], attempt = tonumber(f[2])}, limit)
local applied = retry_or_dead_letter(id, key, f[1], now, delay, 'NACKED', limit, ARGV[12])
if applied < 0 then return {'dead_lettered', f[1], redis.call('HGET', key, 'createdAt')} end
return {'requeued', applied, f[1]}
