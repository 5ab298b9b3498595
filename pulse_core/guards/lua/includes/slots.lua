-- slots: the live holders of a run-slot set (execution limits' max_concurrency); included by
-- acquire_slots, park_slots and release_slots.
-- A holder ('<jobId>|<token>') counts while its grace runs (its score) or while its job is
-- running under a live lease; one that does neither is dropped. A slot handed over
-- ('<jobId>|h', release_slots) counts in its grace only while its job has not ended: a job
-- that ends without its gate taking the slot (its limit was lifted by a deploy or a reload
-- meanwhile) frees it at once, not a grace (a lease) later. `mine` (the handover of the job
-- now asking) is not counted: it is the asker's own.
--@include job_states
local function live_holders(key, now, job_prefix, mine)
  local live = 0
  local held = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for j = 1, #held, 2 do
    local member, grace = held[j], tonumber(held[j + 1])
    if member ~= mine then
      local alive = grace > now
      local handover = string.sub(member, -2) == '|h'
      if not alive or handover then
        local job_id = string.match(member, '^(.*)|')
        local f = redis.call('HMGET', job_prefix .. job_id, 'state', 'leaseUntil')
        if alive then
          alive = f[1] and not FINAL_STATES[f[1]]
        else
          alive = f[1] == 'running' and tonumber(f[2] or '0') > now
        end
      end
      if alive then live = live + 1 else redis.call('ZREM', key, member) end
    end
  end
  return live
end

-- The handover member of the job a holder belongs to.
local function handover_of(holder)
  return string.match(holder, '^(.*)|') .. '|h'
end

-- now (epoch s): the given value (the script tables' fixed clock), else Redis' clock. Never the
-- caller's host clock: a lease is timed by Redis' clock, so a host running ahead would see
-- the live leases of other workers' holders as lapsed and drop their slots.
local function slot_clock(given)
  local now = tonumber(given)
  if now then return now end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
