-- listing_add: add member to a listing index (a zset) at max(score, newest + 1/1024), so newest
-- first follows the order of writes even within one millisecond (pulse_core.store.listing).
-- The score is written with 17 significant digits (Lua's default 14 would round it).
-- Returns the newest score before this one (nil: the index was empty), for the caller's trim.
local function listing_add(key, score, member)
  local s = tonumber(score)
  local newest = tonumber(redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')[2] or '')
  if newest and newest >= s then s = newest + 1 / 1024 end
  redis.call('ZADD', key, string.format('%.17g', s), member)
  return newest
end
