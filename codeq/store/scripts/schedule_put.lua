-- schedule_put: creates or replaces a recurring schedule and indexes its next fire time.
-- KEYS[1] tenant prefix
-- ARGV  1 name  2 spec (JSON)  3 next fire time ms ('' = none left)  4 now ms
-- A paused schedule stays paused (and out of the firer's index). Every put bumps the
-- version, so a fire planned from the old spec is refused (schedule_fire's CAS).
-- Returns {'created' | 'updated', version}.
local name, next_at, now = ARGV[1], ARGV[3], ARGV[4]
local key = k_schedule(name)
local existed = redis.call('EXISTS', key) == 1
local version = redis.call('HINCRBY', key, 'version', 1)
redis.call('HSET', key, 'spec', ARGV[2], 'next', next_at, 'updatedAt', now)
if not existed then
  redis.call('HSET', key, 'createdAt', now, 'paused', 0, 'fires', 0, 'misfires', 0)
end
redis.call('SADD', K_SCHEDULE_NAMES, name)
if next_at ~= '' and redis.call('HGET', key, 'paused') ~= '1' then
  redis.call('ZADD', K_SCHEDULES, next_at, name)
else
  redis.call('ZREM', K_SCHEDULES, name)
end
return {existed and 'updated' or 'created', version}
