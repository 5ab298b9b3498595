-- park_due: park a job's message until a time: a full execution-rate window (ExecutionGate.enter),
-- a retry's backoff, a delayed job (admission, pipelined after admit).
-- KEYS[1] the due set (job id -> when, epoch s)   KEYS[2] the parked messages
-- KEYS[3] (optional) the job hash: nothing is parked unless it exists (admit created it)
-- ARGV[1] job id   ARGV[2] in how many seconds (Redis' clock)   ARGV[3] the broker list
-- ARGV[4] the message that starts the job again
-- ARGV[5] (optional) 'nx': leave a job already parked as it is (a copy of it that arrived early)
-- Reply: when it is due (epoch s, as a string); '0' when nothing was parked.

if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then return '0' end
if ARGV[5] == 'nx' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then return '0' end

local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.6f', due), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '\n' .. ARGV[4])
return string.format('%.6f', due)
