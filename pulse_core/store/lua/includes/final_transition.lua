-- final_transition: move a job into a final state; included by finalize and cancel.
-- The including script checks the preconditions. Keeps the backlog exact: the tenant's
-- pending count goes down by one on every move into a final state, and only here.
-- A dead job joins the dead letters (scored now_ms, after any letter of the same ms) and
-- persists; any other is kept for retention seconds. The dead letters end too: letters past
-- the tenant's dead_letter_days, and the oldest past its max_dead_letters, leave them (a few
-- per death, so the work stays bounded) and their records expire after retention.
-- The tenant's counters (stored_bytes: its pending count and storage budget) are read once
-- and written once. Keeps the storage budget exact: the record now counts its admitted bytes
-- ('recordBytes') plus its result and error; it stays held while it persists (a dead
-- letter) and moves to the retained buckets as it starts to expire. A result that would take
-- the tenant past result_budget bytes (0: no check) is not kept: the job still succeeds,
-- with an error of type ResultNotKept saying why.
--@include listing_add
--@include stored_bytes
-- The record's fields final_transition reads, in this order (FINAL_READ).
local FINAL_READ = {'storedBytes', 'recordBytes', 'result', 'error', 'dueAt', 'deadLetter', 'message'}
-- pre (optional): the record's FINAL_READ fields, when the including script read them already
-- (finalize reads them with its own fields: one HMGET, not two). The record is written with one
-- HSET, and an HDEL only of fields it holds that a final record must not: its due time, its
-- dead-letter flag, a message still waiting in it, an old error or result replaced by none.
-- The last attempt's startedAt, owner, leaseUntil and claimToken stay, as a record of who ran
-- it (every reader of a lease looks at the state first; a replay deletes them): a job that
-- ends with no such field to delete is written with its HSET alone. The lengths of the result
-- and error it keeps are those of the values read (no HSTRLEN).
local function final_transition(job_key, watch_key, dead_key, counts_key, job_id, state,
                                finished_at, result, err, retention, now_ms, dead_max, dead_ms,
                                result_budget, pre)
  pre = pre or redis.call('HMGET', job_key, unpack(FINAL_READ))
  local held, record_bytes = tonumber(pre[1] or '0'), tonumber(pre[2] or '0')
  local old_result, old_err = pre[3], pre[4]
  local now = tonumber(now_ms) / 1000
  local account = account_load(counts_key, now, tonumber(retention))
  account.pending = account.pending - 1
  local set = {'state', state, 'finishedAt', finished_at}
  -- a message still waiting in the record (cancelled in its ready set) goes too
  local del = {}
  for i, name in ipairs({'dueAt', 'deadLetter', 'message'}) do
    if pre[4 + i] then del[#del + 1] = name end
  end
  local budget = tonumber(result_budget)
  local result_bytes, err_bytes
  if result ~= '' and budget > 0 then
    if account_used(account) + #result > budget then
      err = '{"type":"ResultNotKept","message":"the result (' .. #result .. ' bytes) was not kept: '
            .. 'the tenant\'s storage budget of ' .. budget .. ' bytes (max_stored_bytes) is full"}'
      result, result_bytes = '', 0
      if old_result then del[#del + 1] = 'result' end
    end
  end
  if result ~= '' then
    set[#set + 1], set[#set + 2], result_bytes = 'result', result, #result
  end
  if err ~= '' then
    set[#set + 1], set[#set + 2], err_bytes = 'error', err, #err
  elseif state == 'succeeded' then
    err_bytes = 0
    if old_err then del[#del + 1] = 'error' end
  end
  local bytes = record_bytes + (result_bytes or #(old_result or '')) + (err_bytes or #(old_err or ''))
  if bytes ~= held then set[#set + 1], set[#set + 2] = 'storedBytes', string.format('%d', bytes) end
  redis.call('HSET', job_key, unpack(set))
  if #del > 0 then redis.call('HDEL', job_key, unpack(del)) end
  redis.call('ZREM', watch_key, job_id)
  -- held had the record's bytes before; it counts the new total now
  account.held = account.held + bytes - held
  if state == 'dead' then
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
      account_retain(account, tonumber(redis.call('HGET', prefix .. member, 'storedBytes') or '0'))
    end
  else
    redis.call('EXPIRE', job_key, retention)
    -- retain moves the record's bytes to the bucket of now
    account_retain(account, bytes)
  end
  account_save(account)
end
