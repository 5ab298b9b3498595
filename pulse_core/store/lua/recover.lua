-- recover: the sweep's look at one overdue job.
-- KEYS[1] the job hash   KEYS[2] the watch zset
-- ARGV[1] now (epoch s)   ARGV[2] when to look again (epoch s)   ARGV[3] job id
-- Reply: {'republish', record} (re-armed at ARGV[2]) | {'alive'} (re-armed at its deadline)
--      | {'gone'} (unwatched: missing, final or queued)
--@include job_states

local f = redis.call('HMGET', KEYS[1], 'state', 'leaseUntil', 'dueAt')
local state = f[1]
if not state or FINAL_STATES[state] or state == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return {'gone'}
end
local now = tonumber(ARGV[1])
local deadline = tonumber((state == 'running' and f[2] or f[3]) or '0')
if deadline > now then
  redis.call('ZADD', KEYS[2], deadline, ARGV[3])
  return {'alive'}
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return {'republish', redis.call('HGETALL', KEYS[1])}
