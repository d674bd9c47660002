-- redrive: moves dead-lettered tasks of one command back to ready (their priority
-- tier): PENDING, attempts 0, error cleared, redriveCount + 1, out of the retention
-- and ended indexes, and a `redriven` timeline entry keeping the lineage (previous
-- error and attempts, redrive count, who). A dry run only reports what would move.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 now ms  3 dry run (1|0)  4 by (admin identity)  5 history limit
--       6 origin  7 mode: 'ids' or 'scan'
--       ids:  8.. task ids
--       scan: 8 from score  9 from id  10 error needle (lowercase; '' = all)
--             11 most tasks  12 most entries to look at
-- Returns {{moved ids}, {skipped ids: not in this DLQ}, next score (-1 = end), next id}.
local cmd, now, dry = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local by, limit, origin = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local dlq = k_dlq(cmd)
local candidates, skipped = {}, {}
local next_score, next_id
if ARGV[7] == 'ids' then
  for i = 8, #ARGV do
    if redis.call('ZSCORE', dlq, ARGV[i]) then
      candidates[#candidates + 1] = ARGV[i]
    else
      skipped[#skipped + 1] = ARGV[i]
    end
  end
else
  local found
  found, next_score, next_id = dlq_scan(cmd, ARGV[8], ARGV[9], '+inf', ARGV[10],
    tonumber(ARGV[11]), tonumber(ARGV[12]))
  for _, match in ipairs(found) do candidates[#candidates + 1] = match[1] end
end

local moved = {}
for _, id in ipairs(candidates) do
  local key = k_task(id)
  local f = redis.call('HMGET', key, 'error', 'lastError', 'attempts', 'priority', 'redriveCount')
  if not f[3] then
    redis.call('ZREM', dlq, id)  -- an entry without a record: nothing to move
    skipped[#skipped + 1] = id
  else
    moved[#moved + 1] = id
    if not dry then
      local count = (tonumber(f[5]) or 0) + 1
      redis.call('ZREM', dlq, id)
      redis.call('ZREM', K_RET, id)
      redis.call('ZREM', k_ended(cmd, 'FAILED'), id)
      redis.call('HSET', key, 'status', 'PENDING', 'attempts', 0, 'error', '', 'lastError', '',
        'retryReason', '', 'workerId', '', 'leaseUntil', '', 'leaseToken', '', 'updatedAt', now,
        'redriveCount', count)
      push_ready(id, cmd, tonumber(f[4]), false, origin)
      history(id, now, 'redriven', {by = by, previousError = f[1] or '',
        lastError = f[2] or nil, previousAttempts = tonumber(f[3]), redriveCount = count},
        limit)
    end
  end
end
return {moved, skipped, next_score or -1, next_id or ''}
