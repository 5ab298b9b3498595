-- rate_windows: window_stats and window_acquire over n moving windows whose keys are
-- KEYS[first..] and whose (limit, expiry) pairs are ARGV[arg..]; included by admit and
-- rate_status. The window arithmetic is the limits library's own (limits_moving_window).
--@include limits_moving_window

-- {limit, remaining, reset seconds} of the tightest window, then the first full
-- window's retry-after (seconds) and '1' when some window is full.
local function window_stats(now, first, arg, n)
  local best_limit, best_remaining, best_reset, retry, full = 0, math.huge, 0, 0, '0'
  for i = 0, n - 1 do
    local key = KEYS[first + i]
    local limit = tonumber(ARGV[arg + 2 * i])
    local expiry = tonumber(ARGV[arg + 2 * i + 1])
    local found = limits_window({key}, {now - expiry, limit})
    local count, reset = 0, expiry
    if found then
      count = found[2]
      reset = tonumber(found[1]) + expiry - now
    end
    local remaining = limit - count
    if remaining <= 0 and full == '0' then retry, full = reset, '1' end
    if remaining < best_remaining then
      best_limit, best_remaining, best_reset = limit, remaining, reset
    end
  end
  if best_remaining < 0 then best_remaining = 0 end
  return {best_limit, best_remaining, tostring(best_reset), tostring(retry), full}
end

local function window_acquire(now, first, arg, n)
  for i = 0, n - 1 do
    limits_acquire({KEYS[first + i]}, {now, ARGV[arg + 2 * i], ARGV[arg + 2 * i + 1], 1})
  end
end
