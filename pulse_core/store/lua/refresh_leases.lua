-- refresh_leases: a live worker extends the leases of the attempts it runs.
-- KEYS[1] the watch zset; KEYS[2..] the job hashes
-- ARGV[1] lease until (epoch s)   ARGV[2] owner   ARGV[3..] the job ids, in the order of KEYS[2..]
-- Reply: how many leases were extended (the owner's running attempts only).

local n = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'owner')
  if f[1] == 'running' and f[2] == ARGV[2] then
    redis.call('HSET', KEYS[i], 'leaseUntil', ARGV[1])
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i + 1])
    n = n + 1
  end
end
return n
