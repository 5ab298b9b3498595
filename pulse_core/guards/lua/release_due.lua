-- release_due: push the messages of the parked jobs that are due back onto their queues, in bulk
-- (the workers' tick). A job parked with no broker list (a broker other than this Redis) is
-- given back for the caller to publish.
-- KEYS[1] the due set   KEYS[2] the parked messages   ARGV[1] the most jobs to release
-- Reply: {how many jobs were due, the ids of those the caller publishes...}.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {#due}
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  local stored = redis.call('HGET', KEYS[2], job_id)
  redis.call('HDEL', KEYS[2], job_id)
  if stored then
    local list, message = string.match(stored, '^([^\n]*)\n(.*)$')
    if list == '' then out[#out + 1] = job_id else redis.call('LPUSH', list, message) end
  end
end
return out
