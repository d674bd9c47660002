-- dlq_page: one page of a command's DLQ, oldest dead-letter first, after a cursor,
-- filtered by error text and dead-letter time. Read only.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 from score (ms)  3 from id ('' = from the first at that score)
--       4 max score (ms or '+inf')  5 error needle (lowercase; '' = any)  6 page size
--       7 most entries to look at
-- Returns {next score (-1 = end), next id, {dead-letter ms, task fields as HGETALL}...}.
local found, score, id = dlq_scan(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  tonumber(ARGV[6]), tonumber(ARGV[7]))
local out = {score or -1, id or ''}
for _, match in ipairs(found) do
  local fields = redis.call('HGETALL', k_task(match[1]))
  if #fields > 0 then out[#out + 1] = {match[2], fields} end
end
return out
