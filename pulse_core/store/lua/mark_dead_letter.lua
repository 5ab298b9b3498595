-- mark_dead_letter: record the last error of a running attempt about to be dead-lettered.
-- KEYS[1] the job hash
-- ARGV[1] attempt   ARGV[2] cycle   ARGV[3] the error (JSON)
-- Reply: 1, or 0 when that attempt of that cycle is not the running one.

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle')
if f[1] ~= 'running' or tonumber(f[2]) ~= tonumber(ARGV[1])
   or tonumber(f[3] or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[3], 'deadLetter', '1')
return 1
