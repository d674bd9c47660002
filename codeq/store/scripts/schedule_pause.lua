-- schedule_pause: pauses or resumes a recurring schedule (in or out of the firer's index).
-- KEYS[1] tenant prefix
-- ARGV  1 name  2 paused (1 | 0)  3 next fire time ms ('' = none left)
--       4 expected version ('' = any)
-- Returns 'ok', 'not_found' or 'stale' (the version moved: read again).
local name = ARGV[1]
local key = k_schedule(name)
local version = redis.call('HGET', key, 'version')
if not version then return 'not_found' end
if ARGV[4] ~= '' and ARGV[4] ~= version then return 'stale' end
redis.call('HSET', key, 'paused', ARGV[2], 'next', ARGV[3])
if ARGV[2] == '0' and ARGV[3] ~= '' then
  redis.call('ZADD', K_SCHEDULES, ARGV[3], name)
else
  redis.call('ZREM', K_SCHEDULES, name)
end
return 'ok'
