-- claim: start a job's next attempt under a lease (JobStore.claim).
-- KEYS[1] the job hash
-- KEYS[2] the watch zset (job id -> deadline)
-- ARGV[1] now (epoch s; '' = Redis' clock, as workers call it)   ARGV[2] the lease (seconds)
-- ARGV[3] owner (the worker and the message that starts the attempt)
-- ARGV[4] the message's cycle      ARGV[5] the message's attempt   (-1: the next one)
-- ARGV[6] startedAt (ISO time)     ARGV[7] job id
-- ARGV[8] maxRetries for a record without one
-- ARGV[9] the error (JSON) recorded for a crashed attempt
-- ARGV[10] a token new for each claim call: the same call run again (redis-py retries a call
--          that timed out) answers 'claimed' again instead of 'busy' for its own claim
-- Reply: {'claimed', record, 1 if the previous attempt crashed else 0}
--      | {'exhausted', record}  the crashed attempt was the last, or it was being dead-lettered
--      | {'cancel', record}     its worker died after a cancel was asked: it ends cancelled
--      | {'early', dueAt}       not due yet
--      | {'missing'} | {'stale'} | {'busy'} | {<final state>}
--@include job_states

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'leaseUntil', 'dueAt',
                     'maxRetries', 'deadLetter', 'cancelRequested', 'claimToken')
local state = f[1]
if not state then return {'missing'} end
if FINAL_STATES[state] then return {state} end
if state == 'running' and f[9] and f[9] == ARGV[10] then
  return {'claimed', redis.call('HGETALL', KEYS[1]), 0}
end
local now = tonumber(ARGV[1])
if not now then
  -- Redis' clock, not the worker's: a host whose clock runs ahead cannot take a live lease.
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local lease_until = now + tonumber(ARGV[2])
local n = tonumber(f[2] or '0')
local c, k = tonumber(ARGV[4]), tonumber(ARGV[5])
if c >= 0 and c ~= tonumber(f[3] or '0') then return {'stale'} end
if k >= 0 and k < n then return {'stale'} end
local crashed = 0
if state == 'running' then
  if tonumber(f[4] or '0') > now then return {'busy'} end
  -- Its worker died after someone asked it to stop: it ends cancelled, never runs again.
  if f[8] == '1' then return {'cancel', redis.call('HGETALL', KEYS[1])} end
  if f[7] == '1' then return {'exhausted', redis.call('HGETALL', KEYS[1])} end
  redis.call('HSET', KEYS[1], 'error', ARGV[9])
  if n >= tonumber(f[6] or ARGV[8]) + 1 then
    return {'exhausted', redis.call('HGETALL', KEYS[1])}
  end
  crashed = 1
else
  if k >= 0 and k ~= n + 1 then return {'stale'} end
  if tonumber(f[5] or '0') > now then return {'early', f[5]} end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempts', n + 1, 'startedAt', ARGV[6],
           'leaseUntil', string.format('%.6f', lease_until), 'owner', ARGV[3], 'claimToken', ARGV[10])
redis.call('HDEL', KEYS[1], 'finishedAt', 'dueAt', 'recoveries', 'laneWaits', 'enqueued')
redis.call('ZADD', KEYS[2], string.format('%.6f', lease_until), ARGV[7])
return {'claimed', redis.call('HGETALL', KEYS[1]), crashed}
