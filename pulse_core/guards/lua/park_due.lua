-- park_due: park a job until a time (a full execution-rate window: ExecutionGate.enter).
-- KEYS[1] the due set (job id -> when, epoch s)   KEYS[2] the parked messages
-- ARGV[1] job id   ARGV[2] in how many seconds (Redis' clock)   ARGV[3] the broker list
-- ARGV[4] the message that starts the job again
-- Reply: when it is due (epoch s, as a string).

local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.6f', due), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '\n' .. ARGV[4])
return string.format('%.6f', due)
