-- lib.lua: helpers shared by every script; scripts.py prepends it to each one.
-- KEYS[1] is always the tenant's key prefix "cq:{tag}:" (the routing key).
-- Every other key name is built here, mirroring codeq/store/keys.py.
local P = KEYS[1]
local function k_task(id) return P .. 't:' .. id end
local function k_result(id) return P .. 'res:' .. id end
local function k_hist(id) return P .. 'h:' .. id end
local function k_ready(cmd, tier) return P .. 'q:' .. cmd .. ':' .. tier end
local function k_inprog(cmd) return P .. 'ip:' .. cmd end
local function k_delayed(cmd) return P .. 'dl:' .. cmd end
local function k_dlq(cmd) return P .. 'dlq:' .. cmd end
local function k_ended(cmd, status) return P .. 'end:' .. cmd .. ':' .. status end
local function k_idem(digest) return P .. 'idem:' .. digest end
local function k_sub(id) return P .. 'sub:' .. id end
local function k_subs_of(cmd) return P .. 'subs:' .. cmd end
local function k_gate(id) return P .. 'ntf:' .. id end
local function k_rr(cmd, group) return P .. 'rr:' .. cmd .. ':' .. group end
local function k_callback(id) return P .. 'cb:' .. id end
local function k_schedule(name) return P .. 'sch:' .. name end
-- concurrency keys: a keyed task waits in its key's list of its tier; the keys of a
-- tier that have ready tasks and a free slot wait in the tier's rotation
local function k_kready(cmd, tier, ckey) return P .. 'kq:' .. cmd .. ':' .. tier .. ':' .. ckey end
local function k_rotation(cmd, tier) return P .. 'kr:' .. cmd .. ':' .. tier end
local function k_inflight(cmd) return P .. 'kf:' .. cmd end
local function k_blocked(cmd) return P .. 'kb:' .. cmd end
local function k_kdepth(cmd) return P .. 'kn:' .. cmd end
local function k_qsettings(cmd) return P .. 'qs:' .. cmd end
local K_SUBS = P .. 'subs'
local K_SUBCMDS = P .. 'subcmds'
local K_OUTBOX = P .. 'cbq'
local K_CB_DEAD = P .. 'cbdead'
local K_CMDS = P .. 'cmds'
local K_PAUSED = P .. 'paused'
local K_RET = P .. 'ret'
local K_SCHEDULES = P .. 'schs'
local K_SCHEDULE_NAMES = P .. 'schn'
local READY_CHANNEL = 'cq:ready'
local TAG = string.sub(P, 5, -3)

-- Appends one entry to a task's timeline, keeping the newest `limit` entries.
local function history(id, now, event, detail, limit)
  detail = detail or {}
  detail['at'] = now
  detail['event'] = event
  local key = k_hist(id)
  if redis.call('RPUSH', key, cjson.encode(detail)) > limit then
    redis.call('LTRIM', key, -limit, -1)
  end
end

-- The number of ready tasks of a command, over its ten tiers.
local function ready_depth(cmd)
  local n = 0
  for tier = 0, 9 do n = n + redis.call('LLEN', k_ready(cmd, tier)) end
  return n + (tonumber(redis.call('GET', k_kdepth(cmd))) or 0)
end

-- Announces ready work on the pub/sub channel: "<origin>|<tag>|<command>|<edge>",
-- edge 1 when the command's ready queue just went from empty to non-empty (the
-- originating daemon's notifier then tells the subscriptions).
local function announce_ready(cmd, edge, origin)
  redis.call('PUBLISH', READY_CHANNEL, origin .. '|' .. TAG .. '|' .. cmd .. '|' .. edge)
end

-- A queue's key settings: maxInFlightPerKey (0 = no limit) and whether claims
-- rotate across keys (fairness round_robin).
local function key_settings(cmd)
  local f = redis.call('HMGET', k_qsettings(cmd), 'maxInFlightPerKey', 'fairness')
  return tonumber(f[1]) or 0, f[2] == 'round_robin'
end

-- Whether a key of a command has a free slot under `limit`.
local function has_slot(cmd, ckey, limit)
  if limit <= 0 then return true end
  return (tonumber(redis.call('HGET', k_inflight(cmd), ckey)) or 0) < limit
end

-- Where a key (re-)enters a tier's rotation, in the rotation's score (ms x 1000):
-- by its oldest ready task's time, or with fairness at the back of the rotation, so
-- every key waiting gets one claim before any gets a second.
local function rotation_score(cmd, tier, ckey, fair)
  local head = redis.call('LINDEX', k_kready(cmd, tier, ckey), -1)
  local at = (head and tonumber(redis.call('HGET', k_task(head), 'updatedAt')) or 0) * 1000
  if fair then
    local tail = redis.call('ZRANGE', k_rotation(cmd, tier), -1, -1, 'WITHSCORES')
    if tail[2] and tonumber(tail[2]) + 1 > at then at = tonumber(tail[2]) + 1 end
  end
  return at
end

-- Puts a key with ready tasks in a tier into that tier's rotation (unless it is).
local function activate(cmd, tier, ckey, fair)
  local rot = k_rotation(cmd, tier)
  if redis.call('ZSCORE', rot, ckey) then return end
  redis.call('ZADD', rot, rotation_score(cmd, tier, ckey, fair), ckey)
end

-- Makes a task ready in its tier. `front` puts it next in line (abandon).
-- Announces it when the tier goes from empty to non-empty, so waiters on other
-- daemons learn of it; local waiters are woken by the caller.
-- A task with a concurrency key (`ckey`; nil: read from the record) waits in its
-- key's list; the key enters the tier's rotation when it has a free slot, else it
-- is blocked until a lease of the key ends.
local function push_ready(id, cmd, tier, front, origin, ckey)
  if ckey == nil then ckey = redis.call('HGET', k_task(id), 'concurrencyKey') or '' end
  local key = ckey == '' and k_ready(cmd, tier) or k_kready(cmd, tier, ckey)
  local n
  if front then n = redis.call('RPUSH', key, id) else n = redis.call('LPUSH', key, id) end
  if ckey ~= '' then
    redis.call('INCR', k_kdepth(cmd))
    if n > 1 then return end
    local limit, fair = key_settings(cmd)
    if not has_slot(cmd, ckey, limit) then
      redis.call('SADD', k_blocked(cmd), ckey)
      return
    end
    activate(cmd, tier, ckey, fair)
  end
  if n == 1 then announce_ready(cmd, ready_depth(cmd) == 1 and 1 or 0, origin) end
end

-- Puts a key that was blocked back into the rotation of every tier where it has
-- ready tasks; true when there was one.
local function activate_tiers(cmd, ckey, fair)
  local any = false
  for tier = 0, 9 do
    if redis.call('LLEN', k_kready(cmd, tier, ckey)) > 0 then
      activate(cmd, tier, ckey, fair)
      any = true
    end
  end
  return any
end

-- A lease of a task ended: when the task has a concurrency key, its slot is free,
-- and a key that was blocked enters the rotations of the tiers where it has ready
-- tasks again (announced with no origin, so every daemon wakes its waiters).
local function free_slot(id, cmd)
  local ckey = redis.call('HGET', k_task(id), 'concurrencyKey')
  if not ckey or ckey == '' then return end
  local n = redis.call('HINCRBY', k_inflight(cmd), ckey, -1)
  if n <= 0 then redis.call('HDEL', k_inflight(cmd), ckey) end
  local limit, fair = key_settings(cmd)
  if limit > 0 and n >= limit then return end
  if redis.call('SREM', k_blocked(cmd), ckey) == 0 then return end
  if activate_tiers(cmd, ckey, fair) then announce_ready(cmd, 0, '') end
end

-- Ends the lease of a task (out of the in-progress set), freeing its key's slot.
local function release_lease(id, cmd)
  if redis.call('ZREM', k_inprog(cmd), id) == 1 then free_slot(id, cmd) end
end

-- Takes a PENDING keyed task out of its key's ready list (cancel), leaving the
-- rotation when the key has no more ready tasks in the tier.
local function unready_keyed(id, cmd, tier, ckey)
  local list = k_kready(cmd, tier, ckey)
  if redis.call('LREM', list, 0, id) > 0 then redis.call('DECR', k_kdepth(cmd)) end
  if redis.call('LLEN', list) == 0 then redis.call('ZREM', k_rotation(cmd, tier), ckey) end
end

-- Queues the result callback of a task that just ended, in the step that ends it,
-- when the task has a webhook: the callback dispatcher delivers it from this
-- durable outbox, so a crash between the two can lose nothing. `record` is the
-- result record (JSON) the callback carries. Returns whether one was queued.
-- `f` may hold the task's {webhook, command, traceParent} when the caller read them.
local function enqueue_callback(id, key, now, record, f)
  f = f or redis.call('HMGET', key, 'webhook', 'command', 'traceParent')
  if not f[1] or f[1] == '' then return false end
  local cb = id .. ':' .. now
  redis.call('HSET', k_callback(cb), 'id', cb, 'taskId', id, 'url', f[1], 'command', f[2],
    'traceParent', f[3] or '', 'record', record, 'attempts', 0, 'createdAt', now)
  redis.call('ZADD', K_OUTBOX, now, cb)
  return true
end

-- Stores a new task and makes it ready or delayed (create and create_batch).
-- `t` holds: id, cmd, payload, priority, max_attempts, webhook, digest ('' = no
-- idempotency key), visible (0 = ready now), trace_parent, trace_state, idem_key.
-- The record keeps the key's digest (idemDigest) so that retention cleanup and purge,
-- which cannot hash in Lua, can delete the idempotency key with the task.
-- Returns {'created', id} or {'existing', id, <task fields as HGETALL>}.
local function create_task(t, now, idem_ttl, limit, origin, tenant)
  local id = t.id
  if t.digest ~= '' then
    local ikey = k_idem(t.digest)
    local existing = redis.call('GET', ikey)
    if existing then
      local fields = redis.call('HGETALL', k_task(existing))
      if #fields > 0 then return {'existing', existing, fields} end
    end
    redis.call('SET', ikey, id, 'PX', idem_ttl)
  end
  local key = k_task(id)
  local fields = {'id', id, 'command', t.cmd, 'payload', t.payload, 'priority', t.priority,
    'status', 'PENDING', 'attempts', 0, 'maxAttempts', t.max_attempts, 'tenantId', tenant,
    'createdAt', now, 'updatedAt', now}
  local ckey = t.ckey or ''
  -- optional fields only when given: a smaller record to store, claim and read back
  for _, optional in ipairs({{'webhook', t.webhook}, {'traceParent', t.trace_parent},
      {'traceState', t.trace_state}, {'idempotencyKey', t.idem_key}, {'idemDigest', t.digest},
      {'concurrencyKey', ckey}}) do
    if optional[2] ~= '' then
      fields[#fields + 1] = optional[1]
      fields[#fields + 1] = optional[2]
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('SADD', K_CMDS, t.cmd)
  if t.visible > now then
    redis.call('HSET', key, 'runAt', t.visible)
    redis.call('ZADD', k_delayed(t.cmd), t.visible, id)
    history(id, now, 'created', {runAt = t.visible}, limit)
  else
    push_ready(id, t.cmd, tonumber(t.priority), false, origin, ckey)
    history(id, now, 'created', nil, limit)
  end
  return {'created', id}
end

-- Checks that the caller holds the lease of an IN_PROGRESS task: it is the owner
-- and, when it presents a lease token, the token is the current one. The token is
-- checked first, so a zombie whose lease passed to another worker learns that its
-- token is stale; a valid token never lets another worker act as the owner.
-- Returns nil when it does, else an error code for the service to map.
-- `f` holds the task's {status, workerId, leaseToken}.
local function lease_problem(f, worker, token)
  if not f[1] then return 'not_found' end
  if f[1] ~= 'IN_PROGRESS' then return 'not_in_progress:' .. f[1] end
  if token ~= '' and f[3] ~= token then return 'stale_token' end
  if f[2] ~= worker then return 'not_owner' end
  return nil
end

local function check_lease(key, worker, token)
  return lease_problem(redis.call('HMGET', key, 'status', 'workerId', 'leaseToken'), worker, token)
end

-- Ends an IN_PROGRESS task with its result (COMPLETED or FAILED): stores the result,
-- clears the lease, sets the status, indexes the end (retention, and the command's
-- ended tasks of that status), adds the `event` timeline entry and queues the result
-- callback when the task has a webhook. `f` holds the task's {webhook, command,
-- traceParent}. Returns 1 when a callback was queued else 0.
local function end_with_result(id, key, now, status, record, err, event, detail, limit, f)
  release_lease(id, f[2])
  redis.call('HSET', key, 'status', status, 'error', err, 'leaseUntil', '', 'leaseToken', '',
    'updatedAt', now, 'completedAt', now)
  redis.call('SET', k_result(id), record)
  redis.call('ZADD', K_RET, now, id)
  redis.call('ZADD', k_ended(f[2], status), now, id)
  if err ~= '' then detail['error'] = err end
  history(id, now, event, detail, limit)
  return enqueue_callback(id, key, now, record, f) and 1 or 0
end

-- Records a task's terminal outcome, exactly once (result and result_batch): the
-- caller must hold the lease; then as end_with_result.
-- Returns {'ok', 1 when a callback was queued else 0, command, createdAt ms} | {code}.
local function record_result(id, now, worker, token, status, record, err, limit)
  local key = k_task(id)
  -- one read for the lease check, the cancel flag, the metrics and the callback
  local task = redis.call('HMGET', key, 'status', 'workerId', 'leaseToken', 'cancelRequested',
    'command', 'createdAt', 'webhook', 'traceParent')
  local problem = lease_problem(task, worker, token)
  if problem then return {problem} end
  if task[4] == '1' then return {'cancelled'} end
  local queued = end_with_result(id, key, now, status, record, err, string.lower(status),
    {worker = worker}, limit, {task[7], task[5], task[8]})
  return {'ok', queued, task[5], task[6]}
end

-- Retry delay in ms for the attempt just failed, as codeQ documents its policies.
-- `r` is a uniform random number in [0, 1) supplied by the caller.
local function backoff(policy, base, max, attempts, r)
  local d
  if policy == 'fixed' then
    d = base
  elseif policy == 'linear' then
    d = base * attempts
  else
    d = base * (2 ^ attempts)
    if d > max then d = max end
    if policy == 'exp_full_jitter' then
      d = d * r
    elseif policy == 'exp_equal_jitter' then
      d = d / 2 + (d / 2) * r
    end
  end
  if d > max then d = max end
  return math.floor(d)
end

-- Terminal failure after too many attempts: FAILED, MAX_ATTEMPTS, in the DLQ.
local function dead_letter(id, key, cmd, now, reason, limit)
  redis.call('HSET', key, 'status', 'FAILED', 'error', 'MAX_ATTEMPTS', 'updatedAt', now,
    'leaseUntil', '', 'leaseToken', '')
  redis.call('ZADD', k_dlq(cmd), now, id)
  redis.call('ZADD', K_RET, now, id)
  redis.call('ZADD', k_ended(cmd, 'FAILED'), now, id)
  history(id, now, 'dead_lettered', {reason = reason}, limit)
  enqueue_callback(id, key, now, cjson.encode({taskId = id, status = 'FAILED',
    error = 'MAX_ATTEMPTS', completedAt = now, deadLettered = true}))
end

-- Puts a failed attempt back in line after `delay` ms, or dead-letters it.
-- Returns -1 when dead-lettered, else the delay applied.
local function retry_or_dead_letter(id, key, cmd, now, delay, reason, limit, origin)
  local f = redis.call('HMGET', key, 'attempts', 'maxAttempts', 'priority')
  release_lease(id, cmd)
  if tonumber(f[1]) >= tonumber(f[2]) then
    dead_letter(id, key, cmd, now, reason, limit)
    return -1
  end
  redis.call('HSET', key, 'status', 'PENDING', 'workerId', '', 'leaseUntil', '',
    'leaseToken', '', 'updatedAt', now, 'retryReason', reason)
  if delay > 0 then
    redis.call('ZADD', k_delayed(cmd), now + delay, id)
    redis.call('HSET', key, 'runAt', now + delay)
  else
    push_ready(id, cmd, tonumber(f[3]), false, origin)
  end
  history(id, now, 'retry_scheduled', {reason = reason, delayMs = delay}, limit)
  return delay
end

-- Ends a task as CANCELLED: out of the lease and delay sets, terminal (retention
-- index, ended index), with a `cancelled` timeline entry saying who and how.
local function finish_cancelled(id, key, cmd, now, detail, limit)
  release_lease(id, cmd)
  redis.call('ZREM', k_delayed(cmd), id)
  redis.call('HSET', key, 'status', 'CANCELLED', 'leaseUntil', '', 'leaseToken', '',
    'updatedAt', now, 'completedAt', now)
  redis.call('ZADD', K_RET, now, id)
  redis.call('ZADD', k_ended(cmd, 'CANCELLED'), now, id)
  history(id, now, 'cancelled', detail, limit)
end

-- Deletes a task's record, result and timeline, and its idempotency key while that
-- key still names this task (it may have expired and been reused since).
local function delete_task(id, key, digest)
  if digest and digest ~= '' then
    local ikey = k_idem(digest)
    if redis.call('GET', ikey) == id then redis.call('DEL', ikey) end
  end
  redis.call('DEL', key, k_result(id), k_hist(id))
end

-- Whether a dead-lettered task's error text (`error`, then `lastError`: the last nack
-- reason or LEASE_EXPIRED) contains `needle`, which is lowercase; '' matches all.
local function dlq_error_matches(id, needle)
  if needle == '' then return true end
  local f = redis.call('HMGET', k_task(id), 'error', 'lastError')
  local text = string.lower((f[1] or '') .. '\n' .. (f[2] or ''))
  return string.find(text, needle, 1, true) ~= nil
end

-- Walks a command's DLQ in dead-letter order (score, then id), starting after the
-- position (from_score, from_id) -- from_id '' starts at from_score itself -- up to
-- score `hi` (scores as ARGV strings: ms or '+inf'), collecting the entries whose
-- error matches `needle`. Stops after `want` matches or `budget` entries looked at,
-- so one call stays short on a huge DLQ. Returns the matches ({id, score} pairs) and
-- the position of the last entry looked at, or nil, nil when the walk reached the
-- end (a position is returned only when more entries follow it).
local function dlq_scan(cmd, from_score, from_id, hi, needle, want, budget)
  local key, found, looked, offset = k_dlq(cmd), {}, 0, 0
  local from_n, last_score, last_id = tonumber(from_score), nil, nil
  while true do
    local items = redis.call('ZRANGEBYSCORE', key, from_score, hi, 'WITHSCORES',
      'LIMIT', offset, 100)
    for i = 1, #items, 2 do
      local id, score = items[i], tonumber(items[i + 1])
      if from_id == '' or score > from_n or id > from_id then
        if #found >= want or looked >= budget then return found, last_score, last_id end
        looked = looked + 1
        last_score, last_id = score, id
        if dlq_error_matches(id, needle) then found[#found + 1] = {id, score} end
      end
    end
    if #items < 200 then return found, nil, nil end
    offset = offset + 100
  end
end
