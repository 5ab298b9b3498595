-- announce_live: members live in each of some sorted sets for a while, timed by Redis' clock:
-- a worker's pool concurrency on each of its queues (pulse_core/store/capacity.py), its
-- jobTypes on each of its queues (pulse_core/store/job_types.py). Lapsed members are trimmed,
-- and each key expires with its last live member, never sooner: a worker announcing with a
-- shorter TTL than the others does not cut their entries or the key short.
-- KEYS[1..] the sets (member -> when it lapses, epoch s)
-- ARGV[1] how long the members stay live (seconds)
-- ARGV[2] 'own': the members are the announcing worker's own (its capacity): their expiry is
--         set; 'shared': other workers announce them too (jobTypes): their expiry only ever
--         moves later, so another worker's longer announcement stands
-- ARGV[3..] the members
-- Reply: how many lapsed members were trimmed.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lapses = now + tonumber(ARGV[1])
local trimmed = 0
for i = 1, #KEYS do
  trimmed = trimmed + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  for j = 3, #ARGV do
    if ARGV[2] == 'shared' then
      redis.call('ZADD', KEYS[i], 'GT', lapses, ARGV[j])
    else
      redis.call('ZADD', KEYS[i], lapses, ARGV[j])
    end
  end
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  if #last > 0 then redis.call('PEXPIREAT', KEYS[i], math.ceil(tonumber(last[2]) * 1000)) end
end
return trimmed
