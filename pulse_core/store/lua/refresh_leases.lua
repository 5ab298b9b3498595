-- refresh_leases: a live worker extends the lease of an attempt it runs.
-- KEYS[1] the watch zset; KEYS[2..] the job hashes
-- ARGV[1] the lease (seconds, from Redis' clock)   ARGV[2] owner (the worker and the message
-- that started the attempt)   ARGV[3..] the job ids, in the order of KEYS[2..]
-- Reply: how many leases were extended. Only the owner's running attempt is extended, and
-- only forwards: a renewal delayed in the network never moves a lease back.

local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local n = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'owner', 'leaseUntil')
  if f[1] == 'running' and f[2] == ARGV[2] and until_ > tonumber(f[3] or '0') then
    local value = string.format('%.6f', until_)
    redis.call('HSET', KEYS[i], 'leaseUntil', value)
    redis.call('ZADD', KEYS[1], 'XX', 'GT', value, ARGV[i + 1])
    n = n + 1
  end
end
return n
