-- schedule_due: the schedules whose next fire time has come, for the firer (reads only).
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 batch
-- Returns {the earliest next fire time ms after now of any active schedule ('' = none),
--          name, spec, next, version, name, spec, next, version, ...} for the due ones.
local out = {''}
local later = redis.call('ZRANGEBYSCORE', K_SCHEDULES, '(' .. ARGV[1], '+inf', 'WITHSCORES',
  'LIMIT', 0, 1)
if #later > 0 then out[1] = later[2] end
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULES, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, name in ipairs(due) do
  local f = redis.call('HMGET', k_schedule(name), 'spec', 'next', 'version')
  if f[1] then
    out[#out + 1] = name
    out[#out + 1] = f[1]
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3] or '0'
  end
end
return out
