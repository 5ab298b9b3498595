-- rate_acquire: one start in every execution-rate window of a job, or none (ExecutionGate.enter).
-- Each window is a list of start times (Redis' clock), newest first, at most `limit` long.
-- KEYS[1..n] the windows' lists
-- ARGV[1] slack (s): each window counts this much longer than declared, so the handler's
--         start, a few milliseconds after this gate, never falls inside a full window
-- ARGV[2i], ARGV[2i+1] window i's limit (starts) and length (seconds)
-- Reply: '0' when a start was counted in every window; else the seconds until every window
--        has room (as a string), and nothing was counted.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local slack = tonumber(ARGV[1])
local wait = 0
for i = 1, #KEYS do
  local limit, span = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1]) + slack
  local nth = redis.call('LINDEX', KEYS[i], limit - 1)
  if nth and tonumber(nth) > now - span then
    wait = math.max(wait, tonumber(nth) + span - now)
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, #KEYS do
  local limit, span = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1]) + slack
  redis.call('LPUSH', KEYS[i], string.format('%.6f', now))
  redis.call('LTRIM', KEYS[i], 0, limit - 1)
  redis.call('PEXPIRE', KEYS[i], math.ceil(span * 1000))
end
return '0'
