-- listing_add: add one entry to a listing index the way every writer does (JobStore.create).
-- KEYS[1] the index zset   KEYS[2] (optional) the tenant's counts, whose 'newest' it keeps
-- (a tenant's job index: includes/stored_bytes.lua)
-- ARGV[1] score (epoch ms)   ARGV[2] member
-- Reply: 1.
--@include listing_add

if KEYS[2] then
  local newest = tonumber(redis.call('HGET', KEYS[2], 'newest') or '')
  local s = listing_add(KEYS[1], ARGV[1], ARGV[2], newest or false)
  redis.call('HSET', KEYS[2], 'newest', string.format('%.17g', s))
else
  listing_add(KEYS[1], ARGV[1], ARGV[2])
end
return 1
