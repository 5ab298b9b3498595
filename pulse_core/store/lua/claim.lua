-- claim: start a job's next attempt under a lease (JobStore.claim).
-- KEYS[1] the job hash
-- KEYS[2] the watch zset (job id -> deadline)
-- ARGV[1] now on Redis' clock (epoch s), the earliest the caller's last measure of it allows
--         (pulse_core.redis_client.redis_clock_earliest: never ahead of TIME, so a live lease
--         never looks lapsed); '' = Redis' TIME   ARGV[2] the lease (s), from Redis' TIME
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
-- The record is read once (HGETALL): the reply is that read with this claim's writes applied,
-- and only fields it holds are deleted (a claim costs its read, Redis' clock, one write and the
-- watch's ZADD).
--@include job_states

local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return {'missing'} end
local f = {}
for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
local state = f.state
if not state then return {'missing'} end
if FINAL_STATES[state] then return {state} end
if state == 'running' and f.claimToken and f.claimToken == ARGV[10] then
  return {'claimed', flat, 0}
end

-- The record as it is after HSET of `set` (field, value pairs) and HDEL of `del`, flat.
local function written(set, del)
  local gone = {}
  for _, name in ipairs(del) do gone[name] = true end
  for i = 1, #set, 2 do gone[set[i]] = true end
  local out = {}
  for i = 1, #flat, 2 do
    if not gone[flat[i]] then out[#out + 1], out[#out + 2] = flat[i], flat[i + 1] end
  end
  for i = 1, #set do out[#out + 1] = set[i] end
  return out
end

-- Redis' clock as this claim runs, never the worker host's: a host whose clock runs ahead cannot
-- take a live lease. The lease runs from here, not from the caller's reading of the clock: a claim
-- that reached Redis late (a slow link one way, a stalled Redis) would otherwise start an attempt
-- whose lease had already lapsed, and the sweep would take it for lost while its worker ran it.
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now = tonumber(ARGV[1]) or clock
local lease_until = math.max(now, clock) + tonumber(ARGV[2])
local n = tonumber(f.attempts or '0')
local c, k = tonumber(ARGV[4]), tonumber(ARGV[5])
if c >= 0 and c ~= tonumber(f.cycle or '0') then return {'stale'} end
if k >= 0 and k < n then return {'stale'} end
local crashed = 0
if state == 'running' then
  if tonumber(f.leaseUntil or '0') > now then return {'busy'} end
  -- Its worker died after someone asked it to stop: it ends cancelled, never runs again.
  if f.cancelRequested == '1' then return {'cancel', flat} end
  if f.deadLetter == '1' then return {'exhausted', flat} end
  redis.call('HSET', KEYS[1], 'error', ARGV[9])
  if n >= tonumber(f.maxRetries or ARGV[8]) + 1 then
    return {'exhausted', written({'error', ARGV[9]}, {})}
  end
  crashed = 1
else
  if k >= 0 and k ~= n + 1 then return {'stale'} end
  if tonumber(f.dueAt or '0') > now then return {'early', f.dueAt} end
end
local lease = string.format('%.6f', lease_until)
local set = {'state', 'running', 'attempts', tostring(n + 1), 'startedAt', ARGV[6],
             'leaseUntil', lease, 'owner', ARGV[3], 'claimToken', ARGV[10]}
if crashed == 1 then set[#set + 1], set[#set + 2] = 'error', ARGV[9] end
redis.call('HSET', KEYS[1], unpack(set))
local del = {}
for _, name in ipairs({'finishedAt', 'dueAt', 'recoveries', 'laneWaits', 'enqueued'}) do
  if f[name] then del[#del + 1] = name end
end
if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
redis.call('ZADD', KEYS[2], lease, ARGV[7])
return {'claimed', written(set, del), crashed}
