-- create_batch: stores many new tasks of one tenant, each as create does, in one step.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 idempotency TTL ms  3 history limit  4 origin  5 tenant
--       6 the tasks as one JSON array of arrays: [id, command, payload, priority,
--         maxAttempts, webhook, idempotency digest, visible-at ms, traceParent,
--         traceState, idempotency key, concurrency key] (one argument, decoded by cjson in C, rather
--         than 11 per task: the client's encoding of thousands of arguments cost more
--         than the script)
-- Two tasks of one batch with the same idempotency key make one task: the second
-- gets the first back.
-- Returns one reply per task, in order, as create's.
local now, ttl, limit, origin, tenant = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4],
  ARGV[5]
local out = {}
for _, t in ipairs(cjson.decode(ARGV[6])) do
  out[#out + 1] = create_task({id = t[1], cmd = t[2], payload = t[3], priority = t[4],
    max_attempts = t[5], webhook = t[6], digest = t[7], visible = tonumber(t[8]),
    trace_parent = t[9], trace_state = t[10], idem_key = t[11], ckey = t[12] or ''}, now, ttl, limit, origin, tenant)
end
return out
