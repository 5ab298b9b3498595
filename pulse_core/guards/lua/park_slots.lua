-- park_slots: take a run slot in every set, or park the job on the first full one, taking
-- its tenant's next turn there (ExecutionGate.enter, after acquire_slots found a set full: a
-- slot freed since is taken).
-- KEYS[1..n] the slot sets   KEYS[n+1..2n] their parked sets (job id -> turn)
-- KEYS[2n+1..3n] their turns (keys.parked_turns)
-- KEYS[3n+1] the parked messages (job id -> '<broker list>\n<message>')
-- KEYS[3n+2] the slot sets with parked jobs: slot set -> its most holders
-- ARGV[1] holder   ARGV[2] now (epoch s; '' = Redis' clock)   ARGV[3] the grace (s)  ARGV[4] job key prefix
-- ARGV[5] n   ARGV[6..5+n] the most holders of each set   then: job id, its tenant ('' none),
-- the broker list and the message that start the job again when a slot is handed over
-- Reply: 0 when taken (as acquire_slots), else i: parked on KEYS[i].
-- Turns: a tenant's job parks one turn after the later of its tenant's last parked job and
-- the last job handed a slot, so tenants waiting on the same set take turns (round robin),
-- each tenant's jobs in the order they parked. A job parked already keeps its turn.
--@include slots

local now, n = slot_clock(ARGV[2]), tonumber(ARGV[5])
local grace_until = now + tonumber(ARGV[3])
local mine = handover_of(ARGV[1])
local job_id, tenant, list, message = ARGV[6 + n], ARGV[7 + n], ARGV[8 + n], ARGV[9 + n]
for i = 1, n do
  local most = tonumber(ARGV[5 + i])
  if live_holders(KEYS[i], now, ARGV[4], mine) >= most then
    if not redis.call('ZSCORE', KEYS[n + i], job_id) then
      local turns = KEYS[2 * n + i]
      local seen = redis.call('HMGET', turns, 'released', 't:' .. tenant)
      local turn = math.max(tonumber(seen[1] or '0'), tonumber(seen[2] or '0')) + 1
      redis.call('ZADD', KEYS[n + i], turn, job_id)
      redis.call('HSET', turns, 't:' .. tenant, turn)
    end
    redis.call('HSET', KEYS[3 * n + 1], job_id, list .. '\n' .. message)
    redis.call('HSET', KEYS[3 * n + 2], KEYS[i], most)
    return i
  end
end
for i = 1, n do
  redis.call('ZREM', KEYS[i], mine)
  redis.call('ZADD', KEYS[i], grace_until, ARGV[1])
end
return 0
