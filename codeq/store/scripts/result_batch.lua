-- result_batch: records many terminal outcomes of one tenant's tasks, each as result
-- does, in one step; one item's refusal does not affect the others.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 worker id  3 history limit
--       then 5 per task: id, lease token, status, result JSON, error
-- Returns one reply per task, in order, as result's.
local now, worker, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 5 do
  out[#out + 1] = record_result(ARGV[i], now, worker, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], limit)
end
return out
