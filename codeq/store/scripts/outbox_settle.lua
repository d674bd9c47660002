-- outbox_settle: what became of one delivery of a result callback.
-- KEYS[1] tenant prefix
-- ARGV  1 callback id  2 claim token  3 outcome  4 now ms  5 next attempt ms  6 error
-- outcome: 'delivered' removes it; 'retry' schedules the next attempt; 'defer' (an open
-- circuit breaker) schedules it and gives the attempt back; 'abandon' moves it to the
-- abandoned set for operators. A delivery whose claim was taken over by another
-- daemon (its in-flight time ran out) settles nothing but 'delivered'.
-- Returns {'ok'} | {'stale'}.
local id, outcome, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
local key = k_callback(id)
if outcome == 'delivered' then
  redis.call('ZREM', K_OUTBOX, id)
  redis.call('DEL', key)
  return {'ok'}
end
if redis.call('HGET', key, 'claim') ~= ARGV[2] then return {'stale'} end
redis.call('HSET', key, 'lastError', ARGV[6], 'claim', '')
if outcome == 'abandon' then
  redis.call('ZREM', K_OUTBOX, id)
  redis.call('HSET', key, 'abandonedAt', now)
  redis.call('ZADD', K_CB_DEAD, now, id)
else
  if outcome == 'defer' then redis.call('HINCRBY', key, 'attempts', -1) end
  redis.call('ZADD', K_OUTBOX, tonumber(ARGV[5]), id)
end
return {'ok'}
