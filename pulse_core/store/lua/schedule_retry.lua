-- schedule_retry: a failed attempt becomes 'retrying' with a due time.
-- KEYS[1] the job hash   KEYS[2] the watch zset
-- ARGV[1] attempt   ARGV[2] cycle   ARGV[3] dueAt (epoch s)   ARGV[4] when the sweep looks (epoch s)
-- ARGV[5] the error (JSON)   ARGV[6] job id
-- KEYS[3..9], ARGV[7..10] (optional): the job's queue to dispatch (includes/dispatch.lua)
--@include dispatch
-- Reply: 1, or 0 when that attempt of that cycle is not the running one, or -1 when its tenant
-- asked it to stop (cancelRequested): a failed attempt then ends the job cancelled, never
-- retried, and the caller finalizes it so (nothing changes here). Checked here, not before the
-- call, so a cancel asked while the failure is on its way cannot let the next attempt run.

local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'cancelRequested')
if f[1] ~= 'running' or tonumber(f[2]) ~= tonumber(ARGV[1])
   or tonumber(f[3] or '0') ~= tonumber(ARGV[2]) then return 0 end
if f[4] == '1' then return -1 end
local spec = dispatch_spec(3, 7)
redis.call('HSET', KEYS[1], 'state', 'retrying', 'dueAt', ARGV[3], 'error', ARGV[5])
redis.call('HDEL', KEYS[1], 'leaseUntil', 'owner')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
if spec then dispatch(spec) end
return 1
