-- cancel: a waiting job is cancelled at once, a running one is asked to stop.
-- KEYS[1] the job hash   KEYS[2] the watch zset   KEYS[3] the tenant's dead letters
-- KEYS[4] the tenant's counts (stored_bytes)   KEYS[5] the due set, KEYS[6] the parked messages
-- (a waiting job parked until due, or on a limit, leaves them now, not when it would be due:
-- a delayed job's message could otherwise outlive its record by weeks)
-- KEYS[7] the job's ready set (its tenant's, on its queue): a queued job waiting there for the
-- dispatcher leaves it now too, so a tenant's cancelled backlog neither takes the dispatcher's
-- looks (64 a call) from the jobs of every tenant behind it nor stays in Redis while its
-- queue has no worker to dispatch it
-- ARGV[1] tenant id   ARGV[2] finishedAt (ISO time)   ARGV[3] retention (s)   ARGV[4] job id
-- ARGV[5] now (epoch ms)
-- Reply: 'cancelled' | 'running' (cancelRequested set) | 'finished:<final state>'
--      | 'missing' (no such job for this tenant)
--@include job_states
--@include final_transition

local f = redis.call('HMGET', KEYS[1], 'state', 'tenantId')
local state = f[1]
if not state or f[2] ~= ARGV[1] then return 'missing' end
if WAITING_STATES[state] then
  final_transition(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], 'cancelled', ARGV[2], '', '',
                   ARGV[3], ARGV[5], 0, 0, 0)
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('HDEL', KEYS[6], ARGV[4])
  if KEYS[7] then redis.call('ZREM', KEYS[7], ARGV[4]) end
  return 'cancelled'
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancelRequested', '1')
  return 'running'
end
return 'finished:' .. state
