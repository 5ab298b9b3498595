-- release_lock: delete a lock only if this holder still holds it (the recovery sweep's lock).
-- KEYS[1] the lock   ARGV[1] the holder's token
-- Reply: 1 when released, 0 when someone else holds it (or nobody).

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
