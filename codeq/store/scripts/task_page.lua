-- task_page: one page of a command's tasks in one state, after a cursor, read only.
-- The work is bounded by the page (and, for ready tasks, the realignment budget),
-- never by the queue's depth: a window of the state's own index.
--   ready:       the ten tier lists, in claim order (tier 9 to 0, oldest first). A
--                position's score packs the tier and how many of its tasks, from the
--                oldest, were listed: offset * 10 + tier.
--   delayed, in_progress, dlq, completed, failed, cancelled: the sorted set of the
--                state (by visible time, lease expiry, dead-letter time, end time),
--                by score then id.
-- An index entry whose task is not (or no longer) in the state is passed over.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 state  3 from score ('' = from the start)  4 from id (the last task
--       listed)  5 page size  6 most entries a ready walk looks at to find its place again
-- Returns {next score (-1 = end), next id, {task fields as HGETALL}...}.
local cmd, state, want = ARGV[1], ARGV[2], tonumber(ARGV[5])
local from_score, from_id = ARGV[3], ARGV[4]

-- The status a task in each state has; the index of each sorted-set state.
local STATUS = {ready = 'PENDING', delayed = 'PENDING', in_progress = 'IN_PROGRESS',
  dlq = 'FAILED', completed = 'COMPLETED', failed = 'FAILED', cancelled = 'CANCELLED'}
local ZSET = {delayed = k_delayed(cmd), in_progress = k_inprog(cmd), dlq = k_dlq(cmd),
  completed = k_ended(cmd, 'COMPLETED'), failed = k_ended(cmd, 'FAILED'),
  cancelled = k_ended(cmd, 'CANCELLED')}

-- Up to `n` entries of a sorted set after (score, id), as {id, score} pairs. The last
-- entry listed is found by its rank (O(log n)); one that left the set meanwhile by its
-- score, passing over the entries of that score up to its id.
local function zset_after(key, n)
  local found = {}
  if from_score == '' then
    local items = redis.call('ZRANGE', key, 0, n - 1, 'WITHSCORES')
    for i = 1, #items, 2 do found[#found + 1] = {items[i], tonumber(items[i + 1])} end
    return found
  end
  local score = redis.call('ZSCORE', key, from_id)
  if score and tonumber(score) == tonumber(from_score) then
    local rank = redis.call('ZRANK', key, from_id)
    local items = redis.call('ZRANGE', key, rank + 1, rank + n, 'WITHSCORES')
    for i = 1, #items, 2 do found[#found + 1] = {items[i], tonumber(items[i + 1])} end
    return found
  end
  local from_n, offset = tonumber(from_score), 0
  while true do
    local items = redis.call('ZRANGEBYSCORE', key, from_score, '+inf', 'WITHSCORES',
      'LIMIT', offset, 100)
    for i = 1, #items, 2 do
      local id, at = items[i], tonumber(items[i + 1])
      if at > from_n or id > from_id then
        found[#found + 1] = {id, at}
        if #found >= n then return found end
      end
    end
    if #items < 200 then return found end
    offset = offset + 100
  end
end

-- Where the walk of a tier goes on: after the last task listed. Its tail offset moves
-- when tasks leave the tier's old end (claims) or join it (abandons), so it is looked
-- for within `budget` entries of where it was; not found there, it has most likely
-- been claimed with every older task of the tier, and the walk starts at the oldest
-- (repeating, never skipping).
local function realigned(key, offset, budget)
  -- (a tier shorter than the offset lost entries at its old end: the last task
  -- listed, if still there, is within the tier)
  offset = math.min(offset, redis.call('LLEN', key))
  if offset == 0 or redis.call('LINDEX', key, -offset) == from_id then return offset end
  local lo = math.max(0, offset - 1 - budget)
  local items = redis.call('LRANGE', key, -(offset + budget), -(lo + 1))
  for i = #items, 1, -1 do
    if items[i] == from_id then return lo + (#items - i) + 1 end
  end
  return 0
end

-- Up to `n` ready entries after the position, as {id, position score} pairs.
local function ready_after(n)
  local found, tier, offset = {}, 9, 0
  if from_score ~= '' then
    local packed = tonumber(from_score)
    tier, offset = packed % 10, math.floor(packed / 10)
    offset = realigned(k_ready(cmd, tier), offset, tonumber(ARGV[6]))
  end
  while tier >= 0 and #found < n do
    local key, left = k_ready(cmd, tier), n - #found
    -- tail offsets offset .. offset + left - 1, oldest first
    local items = redis.call('LRANGE', key, -(offset + left), -(offset + 1))
    for i = #items, 1, -1 do
      offset = offset + 1
      found[#found + 1] = {items[i], offset * 10 + tier}
    end
    if #items < left then tier, offset = tier - 1, 0 end
  end
  return found
end

local entries
if state == 'ready' then
  entries = ready_after(want + 1)
else
  entries = zset_after(ZSET[state], want + 1)
end
local out = {-1, ''}
if #entries > want then
  out[1], out[2] = entries[want][2], entries[want][1]
end
for i = 1, math.min(want, #entries) do
  local fields = redis.call('HGETALL', k_task(entries[i][1]))
  local status
  for j = 1, #fields, 2 do
    if fields[j] == 'status' then status = fields[j + 1] end
  end
  if status == STATUS[state] then out[#out + 1] = fields end
end
return out
