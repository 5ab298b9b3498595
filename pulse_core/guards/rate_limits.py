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
Pulse runs those scripts, through ``pulse_core/guards/lua/includes/rate_windows.lua``,
inside its one admission script (``pulse_core.guards.admission``)
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
from typing import Any

from limits import RateLimitItem

from pulse_core import keys


def window_keys(tenant_id: str, items: tuple[RateLimitItem, ...]) -> list[str]:
    """The moving-window keys of ``tenant_id``'s limits, in ``limits``' own naming."""
    return [keys.rate_limit(item.key_for(tenant_id)) for item in items]


def window_args(items: tuple[RateLimitItem, ...]) -> list[int]:
    """``limit, expiry`` per item, as ``rate_windows.lua`` reads them."""
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


@dataclass(frozen=True)
class WindowStats:
    """What ``window_stats`` (``rate_windows.lua``) answers about a tenant's windows."""

    #: The tightest window, for the ``RateLimit-*`` headers.
    status: LimitStatus
    #: Seconds until the first full window frees a slot (0 when none is full).
    retry_after: float
    #: Whether some window is full.
    full: bool


def window_stats(reply: list[Any]) -> WindowStats:
    """Map the Lua ``window_stats`` reply ``{limit, remaining, reset, retry, full}``."""
    limit, remaining, reset, retry, full = reply
    return WindowStats(
        status=LimitStatus(limit=int(limit), remaining=int(remaining), reset=float(reset)),
        retry_after=float(retry),
        full=full == "1",
    )


def whole_seconds(seconds: float) -> int:
    """Seconds rounded up, at least 1 (for ``Retry-After`` and ``RateLimit-Reset``)."""
    return max(1, math.ceil(seconds))
