-- pause: claims stop handing out a command's tasks (claim.lua skips paused queues);
-- the tasks stay where they are. The command is listed even before its first task.
-- KEYS[1] tenant prefix
-- ARGV  1 command
-- Returns 1 when newly paused, 0 when it already was.
redis.call('SADD', K_CMDS, ARGV[1])
return redis.call('SADD', K_PAUSED, ARGV[1])
