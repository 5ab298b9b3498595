-- replay: take a dead job out of the tenant's dead letters and queue it for a new cycle.
-- KEYS[1] the job hash   KEYS[2] the tenant's dead letters   KEYS[3] the pending hash
-- ARGV[1] job id
-- Reply: the record (flat HGETALL), or {} when the tenant has no such dead letter.

if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return {} end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return {} end
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'tenantId'), 1)
redis.call('HINCRBY', KEYS[1], 'cycle', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0)
redis.call('HDEL', KEYS[1], 'result', 'startedAt', 'finishedAt', 'dueAt', 'cancelRequested',
           'leaseUntil', 'owner')
return redis.call('HGETALL', KEYS[1])
