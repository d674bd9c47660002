-- outbox_claim: the callback dispatcher takes due result callbacks to deliver.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 max to take  3 in-flight ms  4 claim token
-- A taken callback counts an attempt and is hidden for the in-flight time: if this
-- daemon dies while delivering it, any daemon takes it again after that.
-- Returns {next due ms or -1, {callback fields as HGETALL}...}.
local now, inflight = tonumber(ARGV[1]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', K_OUTBOX, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {-1}
for _, id in ipairs(ids) do
  local key = k_callback(id)
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', K_OUTBOX, id)
  else
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'claim', ARGV[4])
    redis.call('ZADD', K_OUTBOX, now + inflight, id)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
local first = redis.call('ZRANGE', K_OUTBOX, 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
return out
