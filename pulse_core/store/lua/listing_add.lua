-- listing_add: add one entry to a listing index the way every writer does (JobStore.create).
-- KEYS[1] the index zset
-- ARGV[1] score (epoch ms)   ARGV[2] member
-- Reply: 1.
--@include listing_add

listing_add(KEYS[1], ARGV[1], ARGV[2])
return 1
