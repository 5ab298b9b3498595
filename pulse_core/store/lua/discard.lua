-- discard: undo the creation of a job whose publish failed.
-- KEYS[1] the job hash   KEYS[2] the tenant index   KEYS[3] the pending hash
-- KEYS[4] the idempotency key (or KEYS[1] when there is none)   KEYS[5] the watch zset
-- ARGV[1] tenant id   ARGV[2] job id
-- Reply: 1.

local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'scheduled' then
  redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
local seen = redis.call('GET', KEYS[4])
if seen and string.sub(seen, -#ARGV[2] - 1) == ' ' .. ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return 1
