-- forget_dead_letter: drop one of a tenant's dead letters (DeadLetters.delete). The job record
-- then expires after retention; nothing is written unless the letter was this tenant's.
-- KEYS[1] the tenant's dead letters   KEYS[2] the job hash
-- KEYS[3] the tenant's counts (stored_bytes)
-- ARGV[1] job id   ARGV[2] retention (seconds)
-- Reply: 1 when dropped, 0 when the tenant has no such dead letter.
--@include stored_bytes

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
-- its bytes leave held for the retained bucket of now
local t = redis.call('TIME')
local account = account_load(KEYS[3], tonumber(t[1]), tonumber(ARGV[2]))
account_retain(account, tonumber(redis.call('HGET', KEYS[2], 'storedBytes') or '0'))
account_save(account)
return 1
