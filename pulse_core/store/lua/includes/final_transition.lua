-- final_transition: move a job into a final state; included by finalize and cancel.
-- The including script checks the preconditions. Keeps the backlog exact: the tenant's
-- pending count goes down by one on every move into a final state, and only here.
-- A dead job joins the dead letters (scored now_ms, after any letter of the same ms) and
-- persists; any other is kept for retention seconds. The dead letters end too: letters past
-- the tenant's dead_letter_days, and the oldest past its max_dead_letters, leave them (a few
-- per death, so the work stays bounded) and their records expire after retention.
-- Keeps the storage budget exact (stored_bytes): the record now counts its admitted bytes
-- ('recordBytes') plus its result and error; it stays held while it persists (a dead
-- letter) and moves to the retained buckets as it starts to expire. A result that would take
-- the tenant past result_budget bytes (0: no check) is not kept: the job still succeeds,
-- with an error of type ResultNotKept saying why.
--@include listing_add
--@include stored_bytes
local function final_transition(job_key, watch_key, dead_key, pending_key, job_id, state,
                                finished_at, result, err, retention, now_ms, dead_max, dead_ms,
                                held_key, retained_key, result_budget)
  local tenant = redis.call('HGET', job_key, 'tenantId')
  local now = tonumber(now_ms) / 1000
  redis.call('HINCRBY', pending_key, tenant, -1)
  local budget = tonumber(result_budget)
  if result ~= '' and budget > 0 then
    local used = stored_bytes_used(held_key, retained_key, tenant, now, tonumber(retention))
    if used + #result > budget then
      err = '{"type":"ResultNotKept","message":"the result (' .. #result .. ' bytes) was not kept: '
            .. 'the tenant\'s storage budget of ' .. budget .. ' bytes (max_stored_bytes) is full"}'
      result = ''
      redis.call('HDEL', job_key, 'result')
    end
  end
  redis.call('HSET', job_key, 'state', state, 'finishedAt', finished_at)
  redis.call('HDEL', job_key, 'leaseUntil', 'owner', 'dueAt', 'deadLetter')
  if result ~= '' then redis.call('HSET', job_key, 'result', result) end
  if err ~= '' then
    redis.call('HSET', job_key, 'error', err)
  elseif state == 'succeeded' then
    redis.call('HDEL', job_key, 'error')
  end
  redis.call('ZREM', watch_key, job_id)
  local held = tonumber(redis.call('HGET', job_key, 'storedBytes') or '0')
  local bytes = tonumber(redis.call('HGET', job_key, 'recordBytes') or '0')
                + redis.call('HSTRLEN', job_key, 'result') + redis.call('HSTRLEN', job_key, 'error')
  if bytes ~= held then redis.call('HSET', job_key, 'storedBytes', string.format('%d', bytes)) end
  if state == 'dead' then
    redis.call('HINCRBY', held_key, tenant, string.format('%d', bytes - held))
    listing_add(dead_key, now_ms, job_id)
    redis.call('PERSIST', job_key)
    local prefix = string.sub(job_key, 1, #job_key - #job_id)
    local leaving = redis.call('ZRANGEBYSCORE', dead_key, '-inf', '(' .. (tonumber(now_ms) - tonumber(dead_ms)),
                               'LIMIT', 0, 16)
    local over = redis.call('ZCARD', dead_key) - #leaving - tonumber(dead_max)
    if over > 0 then
      local oldest = redis.call('ZRANGE', dead_key, #leaving, #leaving + math.min(over, 16) - 1)
      for _, member in ipairs(oldest) do leaving[#leaving + 1] = member end
    end
    for _, member in ipairs(leaving) do
      redis.call('ZREM', dead_key, member)
      redis.call('EXPIRE', prefix .. member, retention)
      stored_bytes_retain(held_key, retained_key, tenant, now, tonumber(retention),
                          tonumber(redis.call('HGET', prefix .. member, 'storedBytes') or '0'))
    end
  else
    redis.call('EXPIRE', job_key, retention)
    -- held had the record's bytes before; retain moves them, the new total, to a bucket
    redis.call('HINCRBY', held_key, tenant, string.format('%d', bytes - held))
    stored_bytes_retain(held_key, retained_key, tenant, now, tonumber(retention), bytes)
  end
end
