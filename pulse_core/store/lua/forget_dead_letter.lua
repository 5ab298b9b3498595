-- forget_dead_letter: drop one of a tenant's dead letters (DeadLetters.delete). The job record
-- then expires after retention; nothing is written unless the letter was this tenant's.
-- KEYS[1] the tenant's dead letters   KEYS[2] the job hash
-- ARGV[1] job id   ARGV[2] retention (seconds)
-- Reply: 1 when dropped, 0 when the tenant has no such dead letter.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
