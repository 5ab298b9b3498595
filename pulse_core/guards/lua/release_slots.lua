-- release_slots: give back a holder's run slots and hand each freed slot to the first job
-- parked on it (ExecutionGate.leave; with no holder, the workers' tick: slots whose holder
-- died, or a handover that lapsed, are handed on too).
-- KEYS[1..n] the slot sets   KEYS[n+1..2n] their parked sets   KEYS[2n+1..3n] their turns
-- (keys.parked_turns: the turn of each job handed a slot is recorded there)
-- KEYS[3n+1] the parked messages   KEYS[3n+2] the slot sets with parked jobs: slot set -> its most holders
-- KEYS[3n+3] (optional) the watch zset: a job handed a slot is next checked ARGV[6+n] seconds
--            after (Redis' clock; never earlier than it was), as a job released when due
-- ARGV[1] holder ('' = none)   ARGV[2] now (epoch s; '' = Redis' clock)   ARGV[3] a handover's grace (s)
-- ARGV[4] job key prefix   ARGV[5] n   ARGV[6..5+n] the most holders of each set
-- A parked job handed a slot holds it as '<jobId>|h' until its message, pushed back onto its
-- queue, reaches a worker (acquire_slots takes it as its own) or the grace ends. A parked job
-- is handed a slot while it waits to start (queued, or a retry or delayed job released when
-- due: the gate runs before the claim), or while it runs under a lease that lapsed (a copy of
-- a lost attempt's message: a broker's redelivery, the sweep's republish; its claim ends the
-- lost attempt and starts the next, which needs the slot); one no longer waiting (cancelled
-- meanwhile) or still running under a live lease (its attempt lives) is dropped with its
-- message. A job parked with no
-- broker list (a broker other than this Redis) is handed its slot all the same, and its id is
-- given back for the caller to publish.
-- Reply: {how many parked jobs were handed a slot, the ids of those the caller publishes...}.
--@include slots

--@include job_states

-- Forget the tenants whose parked jobs have all had their turn (their entry no longer moves
-- a turn: the last released one is later), so the hash holds only tenants still waiting.
local function prune_turns(turns, released)
  local seen = redis.call('HGETALL', turns)
  for j = 1, #seen, 2 do
    if seen[j] ~= 'released' and tonumber(seen[j + 1]) <= released then redis.call('HDEL', turns, seen[j]) end
  end
end

local now, n = slot_clock(ARGV[2]), tonumber(ARGV[5])
local grace_until = now + tonumber(ARGV[3])
local handed, out = 0, {0}
local watch, check_at = KEYS[3 * n + 3], nil
if watch then
  -- on Redis' clock, which `now` already is unless a script table fixed it
  check_at = (ARGV[2] == '' and now or slot_clock('')) + tonumber(ARGV[6 + n])
end
for i = 1, n do
  if ARGV[1] ~= '' then redis.call('ZREM', KEYS[i], ARGV[1]) end
  local live = live_holders(KEYS[i], now, ARGV[4], '')
  local most = tonumber(ARGV[5 + i])
  local turns, turn = KEYS[2 * n + i], nil
  while live < most do
    local popped = redis.call('ZPOPMIN', KEYS[n + i])
    if #popped == 0 then break end
    local job_id = popped[1]
    turn = popped[2]
    local stored = redis.call('HGET', KEYS[3 * n + 1], job_id)
    redis.call('HDEL', KEYS[3 * n + 1], job_id)
    local f = redis.call('HMGET', ARGV[4] .. job_id, 'state', 'leaseUntil')
    if stored and (WAITING_STATES[f[1]] or (f[1] == 'running' and tonumber(f[2] or '0') <= now)) then
      local list, message = string.match(stored, '^([^\n]*)\n(.*)$')
      redis.call('ZADD', KEYS[i], grace_until, job_id .. '|h')
      if list == '' then out[#out + 1] = job_id else redis.call('LPUSH', list, message) end
      -- (a lost attempt's deadline stays its lapsed lease: the sweep republishes it again in time)
      if watch and f[1] ~= 'running' then redis.call('ZADD', watch, 'XX', 'GT', check_at, job_id) end
      live, handed = live + 1, handed + 1
    end
  end
  if redis.call('EXISTS', KEYS[n + i]) == 0 then
    redis.call('HDEL', KEYS[3 * n + 2], KEYS[i])
    redis.call('DEL', turns)
  elseif turn then
    redis.call('HSET', turns, 'released', turn)
    if tonumber(turn) % 100 == 0 then prune_turns(turns, tonumber(turn)) end
  end
end
out[1] = handed
return out
