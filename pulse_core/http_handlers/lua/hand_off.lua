-- hand_off: after a 202 the attempt stays running outside the worker, under a lease the
-- receiver extends with heartbeats (AttemptTokens.hand_off).
-- KEYS[1] the job hash   KEYS[2] the watch zset
-- ARGV[1] attempt   ARGV[2] cycle   ARGV[3] the lease (seconds, from Redis' clock)
-- ARGV[4] job id   ARGV[5] the owner of a handed-off attempt
-- Reply: 1, or 0 when the attempt is no longer the running one (nothing changes).

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle')
if f[1] ~= 'running' or f[2] ~= ARGV[1] or (f[3] or '0') ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local until_ = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'leaseUntil', until_, 'owner', ARGV[5])
redis.call('ZADD', KEYS[2], until_, ARGV[4])
return 1
