-- notify_pick: which subscriptions to tell that a command's queue became non-empty.
-- KEYS[1] tenant prefix
-- ARGV  1 command  2 now ms  3 hash seed (an integer, the same for one command and
--       time bucket)  4 round-robin counter TTL ms
-- Live subscriptions of the command (and of '*'), by mode:
--   fanout  every one;
--   group   one per groupId, round-robin: the counter of the group advances per event
--           and the first member from there that its minInterval gate lets through;
--   hash    one per groupId, the member the seed picks (sorted by id), if its gate
--           lets it through.
-- A subscription's gate (minIntervalMs > 0) is a key set NX with that TTL, so across
-- every daemon it is notified at most once per interval. A paused command notifies
-- nobody. Returns {ready depth, id, callback URL, id, callback URL...}.
local cmd, now, seed = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('SISMEMBER', K_PAUSED, cmd) == 1 then return {0} end
local seen, live = {}, {}
for _, index in ipairs({k_subs_of(cmd), k_subs_of('*')}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf')) do
    if not seen[id] then
      seen[id] = true
      local f = redis.call('HMGET', k_sub(id), 'deliveryMode', 'groupId', 'minIntervalMs',
        'callbackUrl')
      if f[1] then live[#live + 1] = {id = id, mode = f[1], group = f[2] or '',
        interval = tonumber(f[3]) or 0, url = f[4]} end
    end
  end
end

local function passes(sub)
  if sub.interval <= 0 then return true end
  return redis.call('SET', k_gate(sub.id), '1', 'PX', sub.interval, 'NX') ~= false
end

local out = {ready_depth(cmd)}
local function pick(sub)
  out[#out + 1] = sub.id
  out[#out + 1] = sub.url
end

local groups, names = {}, {}
for _, sub in ipairs(live) do
  if sub.mode == 'fanout' then
    if passes(sub) then pick(sub) end
  else
    local name = sub.mode .. '|' .. sub.group
    if not groups[name] then groups[name] = {}; names[#names + 1] = name end
    table.insert(groups[name], sub)
  end
end
table.sort(names)
for _, name in ipairs(names) do
  local members = groups[name]
  table.sort(members, function(a, b) return a.id < b.id end)
  local n = #members
  if members[1].mode == 'hash' then
    local chosen = members[(seed % n) + 1]
    if passes(chosen) then pick(chosen) end
  else
    local rr = k_rr(cmd, members[1].group)
    local start = redis.call('INCR', rr)
    redis.call('PEXPIRE', rr, ARGV[4])
    for i = 0, n - 1 do
      local sub = members[((start - 1 + i) % n) + 1]
      if passes(sub) then pick(sub); break end
    end
  end
end
return out
