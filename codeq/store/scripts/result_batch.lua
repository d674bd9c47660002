-- result_batch: records many terminal outcomes of one tenant's tasks, each as result
-- does, in one step; one item's refusal does not affect the others.
-- KEYS[1] tenant prefix
-- ARGV  1 now ms  2 worker id  3 history limit
--       4 the items as one JSON array of arrays: [id, lease token, status, result JSON,
--         error] (one argument: see create_batch.lua)
-- Returns one reply per task, in order, as result's.
local now, worker, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for _, r in ipairs(cjson.decode(ARGV[4])) do
  out[#out + 1] = record_result(r[1], now, worker, r[2], r[3], r[4], r[5], limit)
end
return out
