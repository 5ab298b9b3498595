-- spend_token: an attempt token that has reported its outcome is spent: it can only repeat that
-- outcome (a completion whose answer was lost, sent again), for a day (AttemptTokens.spend).
-- The job's last spent token is kept apart from its attempt token, which the next attempt's
-- delivery replaces.
-- KEYS[1] the attempt token's key   KEYS[2] the job's spent token
-- ARGV[1] the token's SHA-256   ARGV[2] the outcome's SHA-256   ARGV[3] seconds it is kept
-- Reply: 1 when this spent the token first (its attempt token was still there), else 0 (a twin
-- or a resend spent it before).

redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'EX', tonumber(ARGV[3]))
local stored = redis.call('GET', KEYS[1])
if stored and string.match(stored, '^%d+ %d+ (%x+)$') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
