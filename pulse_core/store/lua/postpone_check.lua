-- postpone_check: push a waiting job's deadline later, never earlier (JobStore.postpone_check).
-- KEYS[1] the watch zset   KEYS[2] the job hash
-- ARGV[1] job id   ARGV[2] seconds from now (Redis' clock)
-- A running job's deadline is its lease, and stays so: the message postponed is a copy of its
-- attempt's (a broker's redelivery after its worker died, parked on a limit), and the attempt,
-- if its worker is gone, must be found when the lease lapses, not a queued check later.
-- Reply: 0 (ZADD XX GT adds nothing; the deadline moved only if it was earlier).

if redis.call('HGET', KEYS[2], 'state') == 'running' then return 0 end
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', 'GT', tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
