-- rate_status: where a tenant stands against its limits; reads only.
-- KEYS[1..n] the tenant's rate windows (GCRA)
-- ARGV[1] n   ARGV[2..] n (limit, expiry) pairs
-- Reply: stats as window_stats returns it.
--@include rate_windows

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
return window_stats(now, 1, 2, tonumber(ARGV[1]))
