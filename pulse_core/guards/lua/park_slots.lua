-- park_slots: take a run slot in every set, or park the job, in order, on the first full one
-- (ExecutionGate.enter, after acquire_slots found a set full: a slot freed since is taken).
-- KEYS[1..n] the slot sets   KEYS[n+1..2n] their parked sets (job id -> arrival)
-- KEYS[2n+1] the parked messages (job id -> '<broker list>\n<message>')
-- KEYS[2n+2] the slot sets with parked jobs: slot set -> its most holders
-- ARGV[1] holder   ARGV[2] now (epoch s; '' = Redis' clock)   ARGV[3] the grace (s)  ARGV[4] job key prefix
-- ARGV[5] n   ARGV[6..5+n] the most holders of each set   then: job id, arrival (ms),
-- the broker list and the message that start the job again when a slot is handed over
-- Reply: 0 when taken (as acquire_slots), else i: parked on KEYS[i].
--@include slots

local now, n = slot_clock(ARGV[2]), tonumber(ARGV[5])
local grace_until = now + tonumber(ARGV[3])
local mine = handover_of(ARGV[1])
local job_id, arrival, list, message = ARGV[6 + n], ARGV[7 + n], ARGV[8 + n], ARGV[9 + n]
for i = 1, n do
  local most = tonumber(ARGV[5 + i])
  if live_holders(KEYS[i], now, ARGV[4], mine) >= most then
    redis.call('ZADD', KEYS[n + i], 'NX', arrival, job_id)
    redis.call('HSET', KEYS[2 * n + 1], job_id, list .. '\n' .. message)
    redis.call('HSET', KEYS[2 * n + 2], KEYS[i], most)
    return i
  end
end
for i = 1, n do
  redis.call('ZREM', KEYS[i], mine)
  redis.call('ZADD', KEYS[i], grace_until, ARGV[1])
end
return 0
