-- schedule_delete: deletes a recurring schedule and its index entries (its tasks stay).
-- KEYS[1] tenant prefix
-- ARGV  1 name
-- Returns 1 when it existed, else 0.
local name = ARGV[1]
redis.call('ZREM', K_SCHEDULES, name)
redis.call('SREM', K_SCHEDULE_NAMES, name)
return redis.call('DEL', k_schedule(name))
