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
--@include enqueue_job

if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return -1 end
if redis.call('HSETNX', KEYS[1], 'enqueued', '1') == 0 then return -1 end
local spec = dispatch_spec(3, 1) or dispatch_pop_spec(3, 1)
enqueue_job(spec, KEYS[2], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if not spec.lists then return 0 end
return dispatch(spec)
