-- subscribe: stores a worker subscription and indexes it under each of its commands.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 expires at ms  4 callback URL  5 delivery mode  6 group id
--       7 min interval ms  8 worker id  9 ttl ms  10.. commands ('*' = every command)
-- Returns {'ok'}.
local id, expires = ARGV[1], tonumber(ARGV[3])
local commands = {}
for i = 10, #ARGV do commands[#commands + 1] = ARGV[i] end
redis.call('HSET', k_sub(id), 'id', id, 'createdAt', ARGV[2], 'expiresAt', expires,
  'callbackUrl', ARGV[4], 'deliveryMode', ARGV[5], 'groupId', ARGV[6],
  'minIntervalMs', ARGV[7], 'workerId', ARGV[8], 'ttlMs', ARGV[9],
  'eventTypes', cjson.encode(commands))
redis.call('ZADD', K_SUBS, expires, id)
for _, cmd in ipairs(commands) do
  redis.call('ZADD', k_subs_of(cmd), expires, id)
  redis.call('SADD', K_SUBCMDS, cmd)
end
return {'ok'}
