-- mark_dead_letter: record the last error of a running attempt about to be dead-lettered.
-- KEYS[1] the job hash
-- ARGV[1] attempt   ARGV[2] cycle   ARGV[3] the error (JSON)
-- Reply: 1, or 0 when that attempt of that cycle is not the running one, or -1 when its tenant
-- asked it to stop (cancelRequested): a failed attempt then ends the job cancelled, not dead, and
-- the caller finalizes it so (nothing changes here). Checked here, not only before the call, so
-- a cancel asked while the failure is on its way gets the same answer.

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'cancelRequested')
if f[1] ~= 'running' or tonumber(f[2]) ~= tonumber(ARGV[1])
   or tonumber(f[3] or '0') ~= tonumber(ARGV[2]) then return 0 end
if f[4] == '1' then return -1 end
redis.call('HSET', KEYS[1], 'error', ARGV[3], 'deadLetter', '1')
return 1
