-- acquire_slots: take a run slot in every set (execution limits' max_concurrency), or none.
-- KEYS[1..] the slot sets (holder -> end of its grace)
-- ARGV[1] holder ('<jobId>|<token>')   ARGV[2] now (epoch s)   ARGV[3] grace until (epoch s)
-- ARGV[4] job key prefix   ARGV[5..] the most holders of each set, in the order of KEYS
-- A holder counts while its grace runs or while its job is running under a live lease;
-- one that does neither is dropped.
-- Reply: 0 when taken, else i: KEYS[i] is full (nothing taken).

local now = tonumber(ARGV[2])
for i = 1, #KEYS do
  local live = 0
  local held = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  for j = 1, #held, 2 do
    local member, grace = held[j], tonumber(held[j + 1])
    local alive = grace > now
    if not alive then
      local job_id = string.match(member, '^(.*)|')
      local f = redis.call('HMGET', ARGV[4] .. job_id, 'state', 'leaseUntil')
      alive = f[1] == 'running' and tonumber(f[2] or '0') > now
    end
    if alive then live = live + 1 else redis.call('ZREM', KEYS[i], member) end
  end
  if live >= tonumber(ARGV[4 + i]) then return i end
end
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1]) end
return 0
