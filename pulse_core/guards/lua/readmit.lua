-- readmit: a dead letter queued again for a new cycle, through the door like a submit: the
-- tenant's rate limit and backlog cap hold, and it is watched like any queued job, so a
-- process that dies before publishing loses nothing (Admission.readmit).
-- KEYS[1] the job hash   KEYS[2] the tenant's dead letters   KEYS[3] the tenant's counts (stored_bytes)
-- KEYS[4] the watch zset   KEYS[5..] the tenant's rate windows (GCRA)
-- ARGV[1] job id   ARGV[2] the cycle the caller read it at   ARGV[3] seconds (Redis' clock)
-- until the sweep checks it was claimed   ARGV[4] max pending   ARGV[5] number of windows n
-- ARGV[6..] n (limit, expiry) pairs
-- Reply: {'replayed', stats, record} | {'missing', stats} | {'rate-limited', stats}
--      | {'backlog', stats, pending}
-- Safe to run twice (redis-py retries a call that timed out): a job already queued at the
-- next cycle, not yet claimed, answers 'replayed' again and changes nothing.
--@include rate_windows

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[5])
local stats = window_stats(now, 5, 6, n)
local f = redis.call('HMGET', KEYS[1], 'state', 'cycle', 'attempts', 'tenantId')
local cycle = tonumber(f[2] or '0')
if f[1] == 'queued' and cycle == tonumber(ARGV[2]) + 1 and tonumber(f[3] or '0') == 0 then
  return {'replayed', stats, redis.call('HGETALL', KEYS[1])}
end
if f[1] ~= 'dead' or cycle ~= tonumber(ARGV[2]) or not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return {'missing', stats}
end
if stats[5] == '1' then return {'rate-limited', stats} end
local pending = tonumber(redis.call('HGET', KEYS[3], 'pending') or '0')
if pending >= tonumber(ARGV[4]) then return {'backlog', stats, pending} end

window_acquire(now, 5, 6, n)
stats[2] = stats[2] - 1
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'pending', 1)
-- readyAt (now, Redis' clock) is where the new cycle's queue wait starts.
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'cycle', cycle + 1,
           'readyAt', string.format('%.6f', now))
redis.call('HDEL', KEYS[1], 'result', 'startedAt', 'finishedAt', 'dueAt', 'cancelRequested',
           'leaseUntil', 'owner', 'recoveries', 'laneWaits')
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[1])
return {'replayed', stats, redis.call('HGETALL', KEYS[1])}
