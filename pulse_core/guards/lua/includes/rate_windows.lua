-- rate_windows: window_stats and window_acquire over n rate limits whose keys are
-- KEYS[first..] and whose (limit, expiry) pairs are ARGV[arg..]; included by admit,
-- readmit and rate_status. One set of windows per script run.
--
-- GCRA (the generic cell rate algorithm): a limit of `limit` per `expiry` seconds lets
-- `limit` through at once, then one every tau = expiry / limit (whole microseconds,
-- rounded up). Its key holds one number, the limit's theoretical arrival time (TAT,
-- epoch microseconds on Redis' clock): the moment it is wholly unused again. The key
-- expires then, so a missing key is an unused limit. Cost per check, whatever the
-- window's length or the rate: one MGET for every window, then one SET per window
-- when a submission is let in. Bound: over any span of t seconds at most
-- limit + floor(t / tau) are let in, so at most 2 * limit - 1 in a window of the limit's
-- length (pulse_core/guards/rate_limits.py says why). Written here rather than taken
-- from the limits library: its constant-cost strategy (the sliding-window counter) costs
-- about 11 commands a window per admission and bounds no tighter.

local rate_tats = nil  -- each window's TAT (microseconds), read once per run, kept as taken

local function rate_read(first, n)
  if rate_tats == nil then
    rate_tats = {}
    if n > 0 then
      local found = redis.call('MGET', unpack(KEYS, first, first + n - 1))
      for i = 1, n do rate_tats[i] = tonumber(found[i]) end
    end
  end
  return rate_tats
end

-- now (seconds, Redis' clock) in whole microseconds
local function rate_micros(now)
  return math.floor(now * 1000000 + 0.5)
end

-- the emission interval of a limit, in microseconds (at least 1)
local function rate_tau(limit, expiry)
  return math.max(1, math.ceil(expiry * 1000000 / limit))
end

-- {limit, remaining, reset seconds} of the tightest window, then the first full
-- window's retry-after (seconds) and '1' when some window is full. A window's used
-- slots are its debt (TAT - now) in taus, rounded up; reset is when that count next
-- drops (tau for an unused window: a slot taken now frees then).
local function window_stats(now, first, arg, n)
  local t = rate_micros(now)
  local tats = rate_read(first, n)
  local best_limit, best_remaining, best_reset, retry, full = 0, math.huge, 0, 0, '0'
  for i = 0, n - 1 do
    local limit = tonumber(ARGV[arg + 2 * i])
    local tau = rate_tau(limit, tonumber(ARGV[arg + 2 * i + 1]))
    local debt = math.max(0, (tats[i + 1] or t) - t)
    local used = math.ceil(debt / tau)
    local remaining = limit - used
    local reset = tau
    if used > 0 then reset = debt - (used - 1) * tau end
    if remaining <= 0 and full == '0' then
      -- let in again once the debt is back to (limit - 1) taus
      retry, full = debt - (limit - 1) * tau, '1'
    end
    if remaining < best_remaining then
      best_limit, best_remaining, best_reset = limit, remaining, reset
    end
  end
  if best_remaining < 0 then best_remaining = 0 end
  return {best_limit, best_remaining, tostring(best_reset / 1000000), tostring(retry / 1000000), full}
end

-- Count one submission in every window (the caller checked window_stats first).
local function window_acquire(now, first, arg, n)
  local t = rate_micros(now)
  local tats = rate_read(first, n)
  for i = 0, n - 1 do
    local tau = rate_tau(tonumber(ARGV[arg + 2 * i]), tonumber(ARGV[arg + 2 * i + 1]))
    local tat = math.max(tats[i + 1] or t, t) + tau
    tats[i + 1] = tat
    redis.call('SET', KEYS[first + i], string.format('%.0f', tat), 'PX', math.ceil((tat - t) / 1000))
  end
end
