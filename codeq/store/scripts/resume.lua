-- resume: claims take a paused command's tasks again; waiting claims on every daemon
-- are woken when some are ready.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 origin
-- Returns {1 when it was paused else 0, ready tasks}.
local cmd = ARGV[1]
local was = redis.call('SREM', K_PAUSED, cmd)
local ready = 0
for tier = 0, 9 do ready = ready + redis.call('LLEN', k_ready(cmd, tier)) end
if was == 1 and ready > 0 then
  redis.call('PUBLISH', READY_CHANNEL, ARGV[2] .. '|' .. TAG .. '|' .. cmd)
end
return {was, ready}
