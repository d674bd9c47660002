-- create: stores a new task and makes it ready or delayed, in one step.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 command  3 payload  4 priority  5 maxAttempts  6 webhook
--       7 idempotency digest ('' = none)  8 idempotency TTL ms  9 now ms
--      10 visible-at ms (0 = ready now)  11 history limit  12 origin
--      13 traceParent  14 traceState  15 tenant  16 idempotency key
--      17 concurrency key ('' = none)
-- Returns {'created', id} or {'existing', id, <task fields as HGETALL>}.
return create_task({id = ARGV[1], cmd = ARGV[2], payload = ARGV[3], priority = ARGV[4],
  max_attempts = ARGV[5], webhook = ARGV[6], digest = ARGV[7], visible = tonumber(ARGV[10]),
  trace_parent = ARGV[13], trace_state = ARGV[14], idem_key = ARGV[16], ckey = ARGV[17] or ''},
  tonumber(ARGV[9]), ARGV[8], tonumber(ARGV[11]), ARGV[12], ARGV[15])
