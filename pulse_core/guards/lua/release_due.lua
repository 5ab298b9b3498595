-- release_due: push the messages of the parked jobs that are due back onto their queues, in bulk
-- (the workers' tick). A job parked with no broker list (a broker other than this Redis) is
-- given back for the caller to publish. Each released job's watch deadline moves to now + the
-- queued check (never earlier): released with many others, its message may wait behind them
-- a while, and the sweep need not look at it meanwhile.
-- KEYS[1] the due set   KEYS[2] the parked messages   KEYS[3] (optional) the watch zset
-- ARGV[1] the most jobs to release   ARGV[2] (with KEYS[3]) seconds until a released job is checked
-- ARGV[3..10] (optional): release into the fair order (pulse_core.store.dispatch) instead of
--   onto the queue's list: a released job's message waits in its record and the job in its
--   tenant's ready set, as a job admitted now does, and the queue's dispatch (the caller's tick
--   runs it next) takes it in its tenant's turn; so a tenant's jobs due at one instant do not
--   all run before another tenant's job queued meanwhile. A tenant made active here starts at
--   the queue's virtual time with weight 1 (its own weight applies from its next activation
--   by an admission). The key shapes (pulse_core.keys): ARGV[3] the job key prefix,
--   ARGV[4] '<ready prefix head>' ARGV[5] '<between queue and tenant>' (keys.ready),
--   ARGV[6] keys.active's head, ARGV[7] keys.dispatch_state's head, ARGV[8] keys.DISPATCH_QUEUES,
--   ARGV[9], ARGV[10] keys.tenant_counts's head and tail (its 'seq' orders the ready set)
-- ARGV[11] (optional, with ARGV[3..10]) '1': the caller's broker is not this Redis, so a job
--   parked without a message joins its tenant's ready set too (the caller's pump publishes it in
--   its tenant's turn: pulse_worker.guardian.pump_queues) instead of being given back; without
--   it such a job is given back for the caller to publish (a worker on this Redis's broker that
--   releases a job parked by a process on another broker: it has no message to dispatch)
-- Reply: {how many jobs were due, the ids of those the caller publishes...}.
-- A released copy of a running job (a broker's redelivery, a republished copy, parked on its
-- way) leaves that job's deadline alone: a running job's deadline is its lease, so that a lost
-- attempt is found when the lease lapses, not a queued check later. Known only where the job
-- key prefix (ARGV[3]) is given.

--@include job_states
--@include enqueue_job

-- A key part as pulse_core.keys.part writes it: '%' -> '%25', ':' -> '%3A'.
local function part(text)
  return (string.gsub(string.gsub(text, '%%', '%%25'), ':', '%%3A'))
end

-- The job waits in its tenant's ready set of its queue, its message in its record, as a job
-- admitted now does (store's includes/enqueue_job.lua), at weight 1 (false: no such waiting
-- job, dropped), and the job's state. A running job whose lease lapsed waits too: the recovery
-- sweep parks such jobs due now, so that their next attempts take their tenant's turns.
local function enqueue_fairly(job_id, message)
  local job_key = ARGV[3] .. job_id
  local f = redis.call('HMGET', job_key, 'state', 'queue', 'tenantId', 'priority', 'leaseUntil')
  if not dispatchable(f[1], f[5]) or not f[2] or not f[3] then return false, nil end
  local queue, tenant = f[2], f[3]
  local seq = redis.call('HINCRBY', ARGV[9] .. part(tenant) .. ARGV[10], 'seq', 1)
  if message ~= '' then redis.call('HSET', job_key, 'message', message) end
  local q = {active = ARGV[6] .. part(queue), state = ARGV[7] .. part(queue), queues = ARGV[8], queue = queue}
  enqueue_job(q, ARGV[4] .. part(queue) .. ARGV[5] .. part(tenant), job_id, tenant,
              tonumber(f[4] or '5') or 5, '1', seq)
  return true, f[1]
end

local fair = ARGV[3] ~= nil and ARGV[3] ~= ''
local fair_without_message = fair and ARGV[11] == '1'

-- Whether job_id's record says it runs (false where the job key prefix is not given).
local function running(job_id)
  return fair and redis.call('HGET', ARGV[3] .. job_id, 'state') == 'running'
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local check_at = KEYS[3] and now + tonumber(ARGV[2])
local out = {#due}
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  local stored = redis.call('HGET', KEYS[2], job_id)
  redis.call('HDEL', KEYS[2], job_id)
  if stored then
    local list, message = string.match(stored, '^([^\n]*)\n(.*)$')
    local waits = true
    if list == '' and not fair_without_message then
      out[#out + 1] = job_id
      waits = not running(job_id)
    elseif fair then
      local enqueued, state = enqueue_fairly(job_id, message)
      -- a recovered running job keeps the deadline the sweep gave it (a lease on, not a
      -- queued check): its copy, if lost after its dispatch, is found as soon as before
      waits = enqueued and state ~= 'running'
    else
      redis.call('LPUSH', list, message)
    end
    if waits and check_at then redis.call('ZADD', KEYS[3], 'XX', 'GT', check_at, job_id) end
  end
end
return out
