-- enqueue_job: a job just admitted (queued) waits in its tenant's ready set of its queue
-- (included by admit_one, which wrote its message into its record when the broker is this
-- Redis; the caller then dispatches the queue: includes/dispatch.lua).
-- q: a dispatch spec (dispatch_spec / dispatch_pop_spec)   ready_key: the tenant's ready set
-- priority 0-9 (higher first), then first come first served: seq, the tenant's arrival counter
-- (its counts' 'seq', includes/stored_bytes.lua, kept by the caller); weight: the tenant's weight.
--@include dispatch

local function enqueue_job(q, ready_key, job_id, tenant, priority, weight, seq)
  redis.call('ZADD', ready_key, (9 - tonumber(priority)) * DISPATCH_PRIORITY_SPAN + seq, job_id)
  if not redis.call('ZSCORE', q.active, tenant) then
    -- A tenant that becomes active starts at the virtual time of the last job dispatched:
    -- it is served next, and its idle time earns it no credit. Its weight is read as it
    -- becomes active and kept until it leaves (a changed weight applies from its next
    -- activation); the queue is listed while any tenant is active (dispatch unlists it only
    -- once none is), so both are written here alone.
    redis.call('HSET', q.state, 'w:' .. tenant, weight)
    redis.call('ZADD', q.active, redis.call('HGET', q.state, 'v') or '0', tenant)
    redis.call('SADD', q.queues, q.queue)
  end
end
