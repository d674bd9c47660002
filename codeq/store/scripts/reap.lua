-- reap: retries (or dead-letters) tasks whose lease expired without a heartbeat,
-- like a nack without a delay override, retryReason LEASE_EXPIRED.
-- A task whose cancel was requested ends CANCELLED instead of being retried.
-- Idempotent: a task whose lease was renewed meanwhile is left alone.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 max per command  3 policy  4 base ms  5 max ms  6 random [0,1)
--       7 history limit  8 origin
-- Returns {expired count, next expiry ms or -1, then five fields per expired task:
--   command, id, worker, attempt, outcome (requeued | delayed | dead_lettered | cancelled)}.
local now, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
local base, max, r, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {0, -1}
for _, cmd in ipairs(redis.call('SMEMBERS', K_CMDS)) do
  local zkey = k_inprog(cmd)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, batch)
  for i, id in ipairs(ids) do
    local key = k_task(id)
    local f = redis.call('HMGET', key, 'attempts', 'workerId', 'lastHeartbeatAt', 'leaseUntil',
      'cancelRequested')
    if not f[1] then
      redis.call('ZREM', zkey, id)
    else
      history(id, now, 'lease_expired', {worker = f[2], lastHeartbeatAt = f[3] or nil,
        leaseUntil = f[4], attempt = tonumber(f[1])}, limit)
      local outcome = 'cancelled'
      if f[5] == '1' then
        finish_cancelled(id, key, cmd, now, {worker = f[2], via = 'lease_expired'}, limit)
      else
        -- a low-discrepancy sequence spreads the jitter of tasks reaped together
        local ri = (r + i * 0.6180339887498949) % 1
        local delay = backoff(ARGV[3], base, max, tonumber(f[1]), ri)
        redis.call('HSET', key, 'lastError', 'LEASE_EXPIRED')
        local applied = retry_or_dead_letter(id, key, cmd, now, delay, 'LEASE_EXPIRED', limit, ARGV[8])
        if applied < 0 then outcome = 'dead_lettered'
        elseif applied > 0 then outcome = 'delayed'
        else outcome = 'requeued' end
      end
      out[1] = out[1] + 1
      for _, v in ipairs({cmd, id, f[2] or '', f[1], outcome}) do out[#out + 1] = v end
    end
  end
  local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if out[2] < 0 or at < out[2] then out[2] = at end
  end
end
return out
