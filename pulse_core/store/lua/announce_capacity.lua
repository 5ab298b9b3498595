-- announce_capacity: a worker's pool concurrency, live on each of its queues for a while
-- (pulse_core/store/capacity.py). Timed by Redis' clock. Lapsed announcements are trimmed,
-- and each key expires with its last live announcement, never sooner: a worker announcing
-- with a shorter TTL than the others does not cut their entries' key short.
-- KEYS[1..] the queues' capacity sets (member '<worker hostname>:<concurrency>' -> lapses at)
-- ARGV[1] the member   ARGV[2] how long it stays live (seconds)
-- Reply: how many lapsed announcements were trimmed.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local trimmed = 0
for i = 1, #KEYS do
  trimmed = trimmed + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[i], math.ceil(tonumber(last[2]) * 1000))
end
return trimmed
