-- listing_add: add member to a listing index (a zset) at max(score, newest + 1/1024), so newest
-- first follows the order of writes even within one millisecond (pulse_core.store.listing).
-- The score is written with 17 significant digits (Lua's default 14 would round it).
-- newest: the index's newest score when the caller keeps it (a tenant's index: its counts'
-- 'newest', includes/stored_bytes.lua, kept by every writer of the index; false: none yet);
-- nil: read from the index (a dead-letter index).
-- Returns the score written (the index's newest now).

-- The newest score of the index (nil: it is empty).
local function listing_newest(key)
  return tonumber(redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')[2] or '')
end

local function listing_add(key, score, member, newest)
  local s = tonumber(score)
  if newest == nil then newest = listing_newest(key) end
  if newest and newest >= s then s = newest + 1 / 1024 end
  redis.call('ZADD', key, string.format('%.17g', s), member)
  return s
end
