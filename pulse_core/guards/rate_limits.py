"""Per-tenant rate limits: GCRA, counted in Redis at a constant cost per check.

Strategy: **GCRA** (the generic cell rate algorithm, a token bucket kept as one
number). A limit of ``L`` per ``T`` seconds lets ``L`` submissions through at once,
then one every ``tau = T / L`` (whole microseconds, rounded up, so never faster).
Its Redis key (``keys.rate_limit``) holds the limit's *theoretical arrival time*
(TAT, epoch microseconds on Redis' clock): a submission is let in while
``TAT - now <= (L - 1) * tau``, and moves it to ``max(TAT, now) + tau``; the key
expires when the limit is wholly unused again.

**Cost:** one ``MGET`` for all of a tenant's windows, then one ``SET ... PX`` per
window when a submission is let in, whatever the window's length and the rate
(``tests/test_rate_limits.py`` counts them for ``1/second`` and ``5000/hour``).
The moving window it replaces binary-searched a list of up to ``L`` entries:
22 of the 33 Redis commands of a submit, growing with the window.

**Bound** (tested under an 8-process race in ``tests/test_rate_limits.py``): over
any span of ``t`` seconds at most ``L + floor(t / tau)`` submissions are let in.
Why: after the span's first admission the TAT is at least ``t_first + tau`` and
each further one adds ``tau``, so before the ``c``-th it is at least
``t_first + (c - 1) * tau``, while letting it in needs at most
``t_last + (L - 1) * tau``; hence ``c <= L + (t_last - t_first) / tau``. So a
window of the limit's own length holds at most ``2 * L - 1`` (a full burst, then
the slots that came back during it), where the moving window held at most ``L``;
the error is at most ``L - 1`` whatever the span, so over long spans the rate is
the limit's. In exchange a tenant that spent its burst gets a slot back every
``tau`` rather than waiting for the whole window to pass.

Written in Lua here (``pulse_core/guards/lua/includes/rate_windows.lua``) rather
than taken from the ``limits`` library, which still parses the limits
(``"100/second;5000/hour"``) and names the keys: its one constant-cost strategy,
the sliding-window counter, costs about 11 commands a window per admission (its
read script and its acquire script each ``GET``/``PTTL`` two keys, ``RENAME`` at a
window's turn) and bounds no tighter (a window across its edge holds nearly
``2 * L``). Pulse runs the include inside its one admission script
(``pulse_core.guards.admission``), so the limit, idempotency, the backlog and the
job record cost one round trip and cannot race, with

* Redis' clock (``TIME``), so API hosts with skewed clocks still share one limit;
* several limits (``"100/second;5000/hour"``) all-or-nothing: every one is
  checked before any is consumed, so a refused submission consumes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem

from pulse_core import keys
from pulse_core.errors import RateLimited


def window_keys(tenant_id: str, items: tuple[RateLimitItem, ...]) -> list[str]:
    """The keys of ``tenant_id``'s limits, one per limit, named after ``limits``' own keys."""
    return [keys.rate_limit(item.key_for(tenant_id)) for item in items]


def window_args(items: tuple[RateLimitItem, ...]) -> list[int]:
    """``limit, expiry`` (seconds) per item, as ``rate_windows.lua`` reads them."""
    args: list[int] = []
    for item in items:
        args += [item.amount, item.get_expiry()]
    return args


@dataclass(frozen=True)
class LimitStatus:
    """Where the tenant stands against its tightest limit (the API answers it as ``RateLimit-*``)."""

    limit: int
    remaining: int
    #: Seconds until the tightest window frees a slot (``remaining`` next goes up; for an
    #: unused window, when a slot taken now would come back).
    reset: float


@dataclass(frozen=True)
class WindowStats:
    """What ``window_stats`` (``rate_windows.lua``) answers about a tenant's windows."""

    #: The tightest window, for the ``RateLimit-*`` headers.
    status: LimitStatus
    #: Seconds until the first full window lets a submission in again (0 when none is full).
    retry_after: float
    #: Whether some window is full.
    full: bool


class LimitReached(RateLimited):
    """A submission the rate limit refused, with where the tenant stood as the same script
    refused it: the answer's ``RateLimit-*`` headers describe that refusal, where a second
    read could already see a slot come back (one does every ``tau``)."""

    def __init__(self, message: str, *, retry_after: int, limit: LimitStatus) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit = limit


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
