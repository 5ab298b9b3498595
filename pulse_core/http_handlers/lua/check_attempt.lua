-- check_attempt: is this token the running, handed-off attempt's? Extend its lease if asked
-- (a heartbeat) (AttemptTokens.check).
-- KEYS[1] the attempt token's key   KEYS[2] the job hash   KEYS[3] the watch zset
-- KEYS[4] the job's spent token (spend_token.lua)
-- ARGV[1] the token's SHA-256   ARGV[2] the lease to extend to (seconds from Redis' clock;
-- '' to only check)   ARGV[3] job id   ARGV[4] the owner of a handed-off attempt
-- Reply: {'ok', attempt, cycle} | {'bad-token'} | {'not-handed-off'}
--      | {'not-running', state, attempt, cycle} (the token's attempt and cycle)
--      | {'spent', outcome}: the token has reported the outcome whose SHA-256 this is
-- 'not-handed-off': the token's attempt runs, but its worker has not recorded the 202 yet (a
-- receiver that calls back as soon as it answered): the caller may ask again shortly.

local spent = redis.call('GET', KEYS[4])
if spent then
  local token, outcome = string.match(spent, '^(%x+) (%x+)$')
  if token == ARGV[1] then return {'spent', outcome} end
end
local stored = redis.call('GET', KEYS[1])
if not stored then return {'bad-token'} end
local attempt, cycle, digest = string.match(stored, '^(%d+) (%d+) (%x+)$')
if digest ~= ARGV[1] then return {'bad-token'} end
local f = redis.call('HMGET', KEYS[2], 'state', 'attempts', 'cycle', 'owner')
if f[1] == 'running' and f[2] == attempt and (f[3] or '0') == cycle and f[4] ~= ARGV[4] then
  return {'not-handed-off'}
end
if f[1] ~= 'running' or f[2] ~= attempt or (f[3] or '0') ~= cycle or f[4] ~= ARGV[4] then
  return {'not-running', f[1] or 'missing', attempt, cycle}
end
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  local until_ = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2]))
  redis.call('HSET', KEYS[2], 'leaseUntil', until_)
  redis.call('ZADD', KEYS[3], until_, ARGV[3])
end
return {'ok', attempt, cycle}
