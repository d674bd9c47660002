-- result: records a task's terminal outcome, exactly once.
-- KEYS[1] tenant prefix
-- ARGV  1 id  2 now ms  3 worker id  4 lease token  5 status (COMPLETED|FAILED)
--       6 result JSON  7 error  8 history limit
-- Queues the result callback when the task has a webhook.
-- Returns {'ok', 1 when a callback was queued else 0, command, createdAt ms} | {error code}.
return record_result(ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  tonumber(ARGV[8]))
