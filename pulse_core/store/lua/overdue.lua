-- overdue: the watched job ids whose deadline passed, on Redis' clock (JobStore.overdue).
-- KEYS[1] the watch zset
-- ARGV[1] the most ids to return
-- Reply: a list of job ids, most overdue first.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
