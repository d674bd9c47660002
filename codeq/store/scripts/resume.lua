-- resume: claims take a paused command's tasks again; waiting claims on every daemon
-- are woken when some are ready.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 origin
-- Returns {1 when it was paused else 0, ready tasks}.
local cmd = ARGV[1]
local was = redis.call('SREM', K_PAUSED, cmd)
local ready = ready_depth(cmd)
-- a resumed queue with work is, to its subscribers, a queue that became non-empty
if was == 1 and ready > 0 then announce_ready(cmd, 1, ARGV[2]) end
return {was, ready}
