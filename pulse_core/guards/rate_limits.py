"""Per-tenant rate limits: the ``limits`` library's moving window, counted in Redis.

Strategy: **moving window**. It is exact — in *every* window of the limit's
length, at most ``amount`` submissions are admitted, across all API processes —
where a fixed window lets a burst of twice the limit through at a window edge
and the sliding-window counter only approximates. Its cost (one list entry per
admitted job, trimmed to ``amount``) is small for door-keeping limits.

The window arithmetic is the ``limits`` library's own Lua (``moving_window.lua``
and ``acquire_moving_window.lua``, loaded from the installed package) on its own
key and list layout, so ``limits.strategies.MovingWindowRateLimiter`` over a
``RedisStorage(key_prefix=keys.RATE_LIMIT_PREFIX)`` sees exactly the same state.
Pulse runs those scripts inside its one admission script (``pulse_core.guards.admission``)
so that the limit, idempotency, the backlog and the job record cost one round
trip and cannot race; two things change from calling ``limits`` directly:

* the clock is the Redis server's (``TIME``), so API hosts with skewed clocks
  still share one window;
* several limits (``"100/second;5000/hour"``) are all-or-nothing: every one is
  checked before any is consumed, so a refused submission consumes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

from limits import RateLimitItem

from pulse_core import keys

_LIMITS_LUA = resources.files("limits") / "resources" / "redis" / "lua_scripts"


def limits_lua_functions() -> str:
    """The ``limits`` moving-window scripts, wrapped as Lua functions for a larger script.

    ``limits_window(KEYS, ARGV)`` and ``limits_acquire(KEYS, ARGV)`` take the very
    arguments ``RedisStorage.get_moving_window`` and ``acquire_entry`` pass.
    """
    window = (_LIMITS_LUA / "moving_window.lua").read_text(encoding="utf-8")
    acquire = (_LIMITS_LUA / "acquire_moving_window.lua").read_text(encoding="utf-8")
    return (
        f"local function limits_window(KEYS, ARGV)\n{window}\nend\n"
        f"local function limits_acquire(KEYS, ARGV)\n{acquire}\nend\n"
    )


#: The Lua fragment the admission script uses: ``window_stats`` and ``window_acquire``
#: over the ``n`` windows whose keys are ``KEYS[first..]`` and whose limit and
#: expiry are pairs of ``ARGV[arg..]``.
LUA = (
    limits_lua_functions()
    + """
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
"""
)


def window_keys(tenant_id: str, items: tuple[RateLimitItem, ...]) -> list[str]:
    """The moving-window keys of ``tenant_id``'s limits, in ``limits``' own naming."""
    return [keys.rate_limit(item.key_for(tenant_id)) for item in items]


def window_args(items: tuple[RateLimitItem, ...]) -> list[int]:
    """``limit, expiry`` per item, as the Lua fragment reads them."""
    args: list[int] = []
    for item in items:
        args += [item.amount, item.get_expiry()]
    return args


@dataclass(frozen=True)
class LimitStatus:
    """Where the tenant stands against its tightest limit (the API answers it as ``RateLimit-*``)."""

    limit: int
    remaining: int
    #: Seconds until the tightest window frees a slot.
    reset: float


def whole_seconds(seconds: float) -> int:
    """Seconds rounded up, at least 1 (for ``Retry-After`` and ``RateLimit-Reset``)."""
    return max(1, math.ceil(seconds))
