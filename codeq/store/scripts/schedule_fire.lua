-- schedule_fire: one fire of a recurring schedule, in one step: advances the schedule's
-- next fire time and creates its task (create_task, with an idempotency key made of
-- the schedule and the fire time). Only if the schedule is as the firer read it: its
-- next fire time and version compare equal and it is not paused (compare-and-set), so
-- daemons racing on one fire make one task, and an edit or pause in between wins.
-- Mode 'run' ("run now") checks the version only and moves no fire time.
-- KEYS[1] tenant prefix
-- ARGV  1 name  2 mode ('fire' | 'run')  3 expected next ms  4 expected version
--       5 new next ms ('' = none left: the schedule has ended)  6 create (1 | 0)
--       7 fire times missed (misfires)  8 task id  9 command  10 payload  11 priority
--      12 maxAttempts  13 webhook  14 idempotency digest  15 idempotency key
--      16 idempotency TTL ms  17 now ms  18 history limit  19 origin  20 tenant
-- Returns {'stale'} (nothing done), {'skipped', ''} (advanced, no task: a skipped
-- misfire) or {'created' | 'existing', task id}.
local name, mode = ARGV[1], ARGV[2]
local key = k_schedule(name)
local f = redis.call('HMGET', key, 'next', 'version', 'paused')
if not f[2] or f[2] ~= ARGV[4] then return {'stale'} end
if mode == 'fire' then
  if f[1] ~= ARGV[3] or f[3] == '1' then return {'stale'} end
  redis.call('HSET', key, 'next', ARGV[5])
  if ARGV[5] == '' then
    redis.call('ZREM', K_SCHEDULES, name)
  else
    redis.call('ZADD', K_SCHEDULES, ARGV[5], name)
  end
  if ARGV[7] ~= '0' then redis.call('HINCRBY', key, 'misfires', ARGV[7]) end
end
if ARGV[6] ~= '1' then return {'skipped', ''} end
local now = tonumber(ARGV[17])
local reply = create_task({id = ARGV[8], cmd = ARGV[9], payload = ARGV[10],
  priority = ARGV[11], max_attempts = ARGV[12], webhook = ARGV[13], digest = ARGV[14],
  visible = 0, trace_parent = '', trace_state = '', idem_key = ARGV[15]},
  now, ARGV[16], tonumber(ARGV[18]), ARGV[19], ARGV[20])
redis.call('HSET', key, 'lastFireAt', now, 'lastTaskId', reply[2])
if reply[1] == 'created' then redis.call('HINCRBY', key, 'fires', 1) end
return {reply[1], reply[2]}
