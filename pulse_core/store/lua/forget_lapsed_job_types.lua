-- forget_lapsed_job_types: drop the jobTypes no live worker announces any more, and their
-- declared policies with them, so the directory ends as its workers do (announce).
-- KEYS[1] the announced jobTypes (zset: jobType -> when its announcement lapses)
-- KEYS[2] the jobTypes' declared policies (hash)
-- ARGV[1] now (epoch s)
-- Reply: how many jobTypes were dropped.

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, job_type in ipairs(lapsed) do
  redis.call('HDEL', KEYS[2], job_type)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #lapsed
