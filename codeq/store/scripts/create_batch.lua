-- create_batch: stores many new tasks of one tenant, each as create does, in one step.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 idempotency TTL ms  3 history limit  4 origin  5 tenant
--       then 11 per task: id, command, payload, priority, maxAttempts, webhook,
--       idempotency digest, visible-at ms, traceParent, traceState, idempotency key
-- Two tasks of one batch with the same idempotency key make one task: the second
-- gets the first back.
-- Returns one reply per task, in order, as create's.
local now, ttl, limit, origin, tenant = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4],
  ARGV[5]
local out = {}
for i = 6, #ARGV, 11 do
  out[#out + 1] = create_task({id = ARGV[i], cmd = ARGV[i + 1], payload = ARGV[i + 2],
    priority = ARGV[i + 3], max_attempts = ARGV[i + 4], webhook = ARGV[i + 5],
    digest = ARGV[i + 6], visible = tonumber(ARGV[i + 7]), trace_parent = ARGV[i + 8],
    trace_state = ARGV[i + 9], idem_key = ARGV[i + 10]}, now, ttl, limit, origin, tenant)
end
return out
