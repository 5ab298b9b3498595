-- enqueue: a job just admitted waits in its tenant's ready set, then the queue is dispatched
-- (Dispatcher.queue_enqueue, pipelined after admit: nothing happens unless admit created the job).
-- KEYS[1] the job hash   KEYS[2] the tenant's ready set
-- KEYS[3] active   KEYS[4] state   KEYS[5] messages   KEYS[6] dispatch queues   KEYS[7..10] lists
-- ARGV[1] queue   ARGV[2] ready prefix   ARGV[3] job prefix   ARGV[4] depth
-- ARGV[5] job id   ARGV[6] tenant id   ARGV[7] priority (0-9)   ARGV[8] the tenant's weight
-- ARGV[9] the broker message ('' with a broker other than this Redis: KEYS has no lists then,
--         and the job waits for Dispatcher.take)
-- Reply: how many messages were pushed onto the lists, or -1 when the job was not enqueued
-- (not created, no longer queued, or enqueued already: the same call run again).
--@include dispatch

if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return -1 end
if redis.call('HSETNX', KEYS[1], 'enqueued', '1') == 0 then return -1 end
local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1)
redis.call('ZADD', KEYS[2], (9 - tonumber(ARGV[7])) * DISPATCH_PRIORITY_SPAN + seq, ARGV[5])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[5], ARGV[5], ARGV[9]) end
redis.call('HSET', KEYS[4], 'w:' .. ARGV[6], ARGV[8])
if not redis.call('ZSCORE', KEYS[3], ARGV[6]) then
  -- A tenant that becomes active starts at the virtual time of the last job dispatched:
  -- it is served next, and its idle time earns it no credit.
  redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[4], 'v') or '0', ARGV[6])
end
redis.call('SADD', KEYS[6], ARGV[1])
local spec = dispatch_spec(3, 1)
if not spec then return 0 end
return dispatch(spec)
