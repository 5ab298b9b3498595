-- final_transition: move a job into a final state; included by finalize and cancel.
-- The including script checks the preconditions. Keeps the backlog exact: the tenant's
-- pending count goes down by one on every move into a final state, and only here.
-- A dead job joins the dead letters (scored now_ms, after any letter of the same ms) and
-- persists; any other is kept for retention seconds.
--@include listing_add
local function final_transition(job_key, watch_key, dead_key, pending_key, job_id, state,
                                finished_at, result, err, retention, now_ms)
  redis.call('HINCRBY', pending_key, redis.call('HGET', job_key, 'tenantId'), -1)
  redis.call('HSET', job_key, 'state', state, 'finishedAt', finished_at)
  redis.call('HDEL', job_key, 'leaseUntil', 'owner', 'dueAt', 'deadLetter')
  if result ~= '' then redis.call('HSET', job_key, 'result', result) end
  if err ~= '' then
    redis.call('HSET', job_key, 'error', err)
  elseif state == 'succeeded' then
    redis.call('HDEL', job_key, 'error')
  end
  redis.call('ZREM', watch_key, job_id)
  if state == 'dead' then
    listing_add(dead_key, now_ms, job_id)
    redis.call('PERSIST', job_key)
  else
    redis.call('EXPIRE', job_key, retention)
  end
end
