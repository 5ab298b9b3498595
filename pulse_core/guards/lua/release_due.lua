-- release_due: push the messages of the parked jobs that are due back onto their queues, in bulk
-- (the workers' tick). A job parked with no broker list (a broker other than this Redis) is
-- given back for the caller to publish. Each released job's watch deadline moves to now + the
-- queued check (never earlier): released with many others, its message may wait behind them
-- a while, and the sweep need not look at it meanwhile.
-- KEYS[1] the due set   KEYS[2] the parked messages   KEYS[3] (optional) the watch zset
-- ARGV[1] the most jobs to release   ARGV[2] (with KEYS[3]) seconds until a released job is checked
-- Reply: {how many jobs were due, the ids of those the caller publishes...}.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local check_at = KEYS[3] and now + tonumber(ARGV[2])
local out = {#due}
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  local stored = redis.call('HGET', KEYS[2], job_id)
  redis.call('HDEL', KEYS[2], job_id)
  if stored then
    local list, message = string.match(stored, '^([^\n]*)\n(.*)$')
    if list == '' then out[#out + 1] = job_id else redis.call('LPUSH', list, message) end
    if check_at then redis.call('ZADD', KEYS[3], 'XX', 'GT', check_at, job_id) end
  end
end
return out
