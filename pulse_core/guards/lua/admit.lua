-- admit: idempotency, jobType, rate limit, backlog and the job record in one step.
-- KEYS[1] the job hash   KEYS[2] the tenant index   KEYS[3] the pending hash
-- KEYS[4] the idempotency key (or KEYS[1] when there is none)
-- KEYS[5] the Redis list of the job's queue and priority (or KEYS[1] when the caller publishes or
--         the dispatcher enqueues: pulse_core.store.dispatch)
-- KEYS[6] the watch zset   KEYS[7] unused (KEYS[1])   KEYS[8..] the tenant's moving windows
-- ARGV[1] tenant id   ARGV[2] job id   ARGV[3] created (epoch ms)   ARGV[4] fingerprint ('' = no key)
-- ARGV[5] key TTL (s)   ARGV[6] jobType live '1'/'0'   ARGV[7] max pending   ARGV[8] job key prefix
-- ARGV[9] the broker message to push ('' = the caller publishes, or the dispatcher enqueues it)
-- ARGV[10] number of windows n
-- ARGV[11] in how many seconds (Redis' clock) the sweep looks at the job if nothing claimed it
-- ARGV[12] the index horizon (ms): entries created longer ago than this are trimmed (their
--          records have expired after their retention, or are dead letters listed there)
-- ARGV[13..] n (limit, expiry) pairs, then the record's field/value pairs
-- Reply: {outcome, stats, ...} with stats as window_stats returns it:
--   {'created', stats} | {'replay', stats, record} | {'conflict', stats, job id}
--   | {'unknown-type', stats} | {'rate-limited', stats} | {'backlog', stats, pending}
--@include rate_windows
--@include listing_add

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local n = tonumber(ARGV[10])
local stats = window_stats(now, 8, 13, n)

-- The same call again (redis-py retries a call that timed out): it was done already.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', stats} end

if ARGV[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local fp, job_id = string.match(seen, '^(%S+) (%S+)$')
    local record = redis.call('HGETALL', ARGV[8] .. job_id)
    if #record > 0 then
      if fp ~= ARGV[4] then return {'conflict', stats, job_id} end
      return {'replay', stats, record}
    end
    redis.call('DEL', KEYS[4])  -- the job's record is gone: the key is stale
  end
end
if ARGV[6] ~= '1' then return {'unknown-type', stats} end
if stats[5] == '1' then return {'rate-limited', stats} end
local pending = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if pending >= tonumber(ARGV[7]) then return {'backlog', stats, pending} end

window_acquire(now, 8, 13, n)
stats[2] = stats[2] - 1
redis.call('HSET', KEYS[1], unpack(ARGV, 13 + 2 * n))
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[11]), ARGV[2])
listing_add(KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[12])))
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[4] .. ' ' .. ARGV[2], 'EX', ARGV[5])
end
if ARGV[9] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[9]) end
return {'created', stats}
