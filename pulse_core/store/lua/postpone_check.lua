-- postpone_check: push a waiting job's deadline later, never earlier (JobStore.postpone_check).
-- KEYS[1] the watch zset
-- ARGV[1] job id   ARGV[2] seconds from now (Redis' clock)
-- Reply: 0 (ZADD XX GT adds nothing; the deadline moved only if it was earlier).

local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', 'GT', tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
