-- before_delivery: while the attempt is current, record the registration version on the job
-- and store the attempt token's digest (HttpDelivery, before each delivery).
-- KEYS[1] the job hash   KEYS[2] the attempt token's key
-- ARGV[1] attempt   ARGV[2] handler version   ARGV[3] the token value to store   ARGV[4] its TTL (s)
-- Reply: 1, or 0 when the attempt is no longer the running one (nothing changes).

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts')
if f[1] == 'running' and f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'handlerVersion', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
  return 1
end
return 0
