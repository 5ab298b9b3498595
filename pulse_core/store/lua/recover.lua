-- recover: the sweep's look at one overdue job (JobStore.recover_many).
-- KEYS[1] the job hash   KEYS[2] the watch zset
-- KEYS[3] the job's ready set, KEYS[4] the parked messages (execution limits), KEYS[5..] the
--         Redis lists its messages wait on (none of them when the broker is not this Redis)
-- ARGV[1] job id
-- ARGV[2] recheck base for a lapsed lease or a missed due time (s)
-- ARGV[3] recheck base for a queued job (s)   ARGV[4] longest recheck (s)
-- ARGV[5] checks a queued job waits while its lane holds messages before it is republished anyway
-- Reply: {'republish', record} (re-armed after back-off: base * 2^n, capped)
--      | {'waiting'} (it waits in its ready set for the dispatcher, or its queue still holds
--        messages: re-armed a base later)
--      | {'alive'} (re-armed at its deadline) | {'gone'} (unwatched: missing or final)
-- Times are Redis' own (TIME), so a host whose clock runs ahead cannot call live jobs lost.
--@include job_states

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local f = redis.call('HMGET', KEYS[1], 'state', 'leaseUntil', 'dueAt', 'recoveries', 'laneWaits')
local state = f[1]
if not state or FINAL_STATES[state] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'gone'}
end
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if deadline and tonumber(deadline) > now then return {'alive'} end
local live_until = tonumber((state == 'running' and f[2] or f[3]) or '0')
if state ~= 'queued' and live_until > now then
  redis.call('ZADD', KEYS[2], live_until, ARGV[1])
  return {'alive'}
end
local n = tonumber(f[4] or '0')
local base = tonumber(state == 'queued' and ARGV[3] or ARGV[2])
-- Waiting in its ready set: not lost, its queue's dispatcher moves it on in fair order (a
-- running job whose lease lapsed too: the sweep put it there, recovered, for its next attempt).
-- Parked on an execution limit: not lost either, a freed slot or its due time releases it
-- (a copy would be let through by the limit, then refused by the claim: a slot spent for
-- nothing). So too a retry or a delayed job parked on a limit after its due time.
if KEYS[3] and (redis.call('ZSCORE', KEYS[3], ARGV[1])
                or (state ~= 'running' and redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1)) then
  redis.call('ZADD', KEYS[2], now + base, ARGV[1])
  return {'waiting'}
end
-- A copy may still wait behind others on its queue (a queued job's first message, a delayed
-- job's or a retry's released from parking when due, or an earlier republished copy): give it
-- more time, a bounded number of checks. Only a lapsed lease is republished at once.
if state ~= 'running' or n > 0 then
  local waiting = 0
  for i = 5, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
  local waits = tonumber(f[5] or '0')
  if waiting > 0 and waits < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'laneWaits', waits + 1)
    redis.call('ZADD', KEYS[2], now + base, ARGV[1])
    return {'waiting'}
  end
end
redis.call('HSET', KEYS[1], 'recoveries', n + 1, 'laneWaits', 0)
redis.call('ZADD', KEYS[2], now + math.min(base * 2 ^ n, tonumber(ARGV[4])), ARGV[1])
return {'republish', redis.call('HGETALL', KEYS[1])}
