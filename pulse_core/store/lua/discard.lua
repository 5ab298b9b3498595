-- discard: undo the creation of a job whose publish failed.
-- KEYS[1] the job hash   KEYS[2] the tenant index   KEYS[3] the tenant's counts (stored_bytes)
-- KEYS[4] the idempotency key (or KEYS[1] when there is none)   KEYS[5] the watch zset
-- ARGV[1] job id
-- Reply: 1.

local f = redis.call('HMGET', KEYS[1], 'state', 'storedBytes')
if f[1] == 'queued' or f[1] == 'scheduled' then
  redis.call('HINCRBY', KEYS[3], 'pending', -1)
end
-- a record with no expiry counts its bytes as held; they go with it
if f[1] and redis.call('TTL', KEYS[1]) == -1 and f[2] then
  redis.call('HINCRBY', KEYS[3], 'held', -tonumber(f[2]))
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
local seen = redis.call('GET', KEYS[4])
if seen and string.sub(seen, -#ARGV[1] - 1) == ' ' .. ARGV[1] then
  redis.call('DEL', KEYS[4])
end
return 1
