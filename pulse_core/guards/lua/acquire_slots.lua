-- acquire_slots: take a run slot in every set (execution limits' max_concurrency), or none.
-- KEYS[1..] the slot sets (holder -> end of its grace)
-- ARGV[1] holder ('<jobId>|<token>')   ARGV[2] now (epoch s; '' = Redis' clock)   ARGV[3] the grace (s)
-- ARGV[4] job key prefix   ARGV[5..] the most holders of each set, in the order of KEYS
-- A holder counts while its grace runs or while its job is running under a live lease;
-- one that does neither is dropped. A slot handed over to this job (release_slots) is its own.
-- Reply: 0 when taken, else i: KEYS[i] is full (nothing taken).
--@include slots

local now = slot_clock(ARGV[2])
local grace_until = now + tonumber(ARGV[3])
local mine = handover_of(ARGV[1])
for i = 1, #KEYS do
  if live_holders(KEYS[i], now, ARGV[4], mine) >= tonumber(ARGV[4 + i]) then return i end
end
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], mine)
  redis.call('ZADD', KEYS[i], grace_until, ARGV[1])
end
return 0
