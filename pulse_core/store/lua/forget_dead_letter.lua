-- forget_dead_letter: drop one of a tenant's dead letters (DeadLetters.delete). The job record
-- then expires after retention; nothing is written unless the letter was this tenant's.
-- KEYS[1] the tenant's dead letters   KEYS[2] the job hash
-- KEYS[3] the held bytes hash   KEYS[4] the tenant's retained bytes (stored_bytes)
-- ARGV[1] job id   ARGV[2] retention (seconds)   ARGV[3] tenant id
-- Reply: 1 when dropped, 0 when the tenant has no such dead letter.
--@include stored_bytes

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
-- its bytes leave held for the retained bucket of now
local t = redis.call('TIME')
stored_bytes_retain(KEYS[3], KEYS[4], ARGV[3], tonumber(t[1]), tonumber(ARGV[2]),
                    tonumber(redis.call('HGET', KEYS[2], 'storedBytes') or '0'))
return 1
