-- cleanup: retention. Deletes terminal tasks (COMPLETED, FAILED, CANCELLED) whose
-- terminal time is before a cutoff, oldest first: the record, result, timeline,
-- idempotency key, DLQ entry and ended-index entry. Live tasks are never touched: an
-- index entry whose task is no longer terminal (it was redriven) just leaves the
-- index. Idempotent, so any number of replicas may run it at once.
-- KEYS[1] tenant prefix
-- ARGV  1 cutoff ms (exclusive)  2 most index entries to look at
-- Returns {tasks deleted, 1 if more entries may be past the cutoff else 0}.
local max = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', K_RET, '-inf', '(' .. ARGV[1], 'LIMIT', 0, max)
local deleted = 0
for _, id in ipairs(ids) do
  local key = k_task(id)
  local f = redis.call('HMGET', key, 'status', 'command', 'idemDigest')
  redis.call('ZREM', K_RET, id)
  if f[1] == 'COMPLETED' or f[1] == 'FAILED' or f[1] == 'CANCELLED' then
    redis.call('ZREM', k_dlq(f[2]), id)
    redis.call('ZREM', k_ended(f[2], f[1]), id)
    delete_task(id, key, f[3])
    deleted = deleted + 1
  elseif not f[1] then
    redis.call('DEL', k_result(id), k_hist(id))
  end
end
if #ids >= max then return {deleted, 1} end
return {deleted, 0}
