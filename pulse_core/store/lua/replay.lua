-- replay: take a dead job out of the tenant's dead letters and queue it for a new cycle.
-- KEYS[1] the job hash   KEYS[2] the tenant's dead letters   KEYS[3] the pending hash
-- KEYS[4] the watch zset
-- ARGV[1] job id   ARGV[2] seconds (Redis' clock) until the sweep checks it was claimed
-- Watched like any queued job: a process that dies before publishing loses nothing.
-- readyAt (now, Redis' clock) is where the new cycle's queue wait starts.
-- Reply: the record (flat HGETALL), or {} when the tenant has no such dead letter.

if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return {} end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return {} end
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'tenantId'), 1)
redis.call('HINCRBY', KEYS[1], 'cycle', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0,
           'readyAt', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('HDEL', KEYS[1], 'result', 'startedAt', 'finishedAt', 'dueAt', 'cancelRequested',
           'leaseUntil', 'owner', 'recoveries', 'laneWaits')
redis.call('ZADD', KEYS[4], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
return redis.call('HGETALL', KEYS[1])
