"""Retry and timeout policy: named defaults, per-jobType declarations, per-job overrides.

Precedence, highest first (as Dramatiq's ``Retries`` middleware does it):

1. per job, at submit: ``options.maxRetries`` / ``options.timeoutSeconds``, each refused
   (422) above the operator caps ``PULSE_MAX_RETRIES_CAP`` / ``PULSE_TIMEOUT_CAP_SECONDS``;
2. per jobType, where the handler is registered: ``@handler("x", max_retries=5, ...)``;
3. the ``DEFAULT_*`` constants below.

The backoff between attempts is exponential with full jitter and a cap: before
attempt ``n + 1`` Pulse waits a uniform random time in
``[0, min(backoff_max, backoff * 2 ** (n - 1))]`` seconds.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limits import RateLimitItem

    from pulse_core.tenants import JobTypeRule

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_SECONDS = 2.0
DEFAULT_BACKOFF_MAX_SECONDS = 300.0
DEFAULT_TIMEOUT_SECONDS = 300
#: The hard time limit is the soft one plus this: the time a handler has to clean up.
DEFAULT_HARD_TIMEOUT_GRACE_SECONDS = 10
#: The longest window a rate limit may have (a year and a day: ``1/year`` fits). Every
#: window is a Redis key expiring after its length; a longer one would outlive any use.
MAX_RATE_WINDOW_SECONDS = 366 * 24 * 3600


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often a jobType is retried, how far apart, and how long an attempt may run."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = DEFAULT_BACKOFF_SECONDS
    backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS
    #: Soft time limit (seconds); the hard one is this plus the grace constant.
    timeout: int = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("backoff and backoff_max must be >= 0")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")

    def delay_before(self, next_attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before ``next_attempt`` (2, 3, ...): full jitter under a capped curve."""
        exponent = max(0, next_attempt - 2)
        ceiling = min(self.backoff_max, self.backoff * (2.0**exponent))
        return rand() * ceiling

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RetryPolicy:
        raw: Mapping[str, Any] = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def effective(policy: RetryPolicy, *, max_retries: int | None, timeout: int | None) -> tuple[int, int]:
    """(max retries, soft timeout) for one job: its own options win over its jobType's."""
    return (
        policy.max_retries if max_retries is None else max_retries,
        policy.timeout if timeout is None else timeout,
    )


@dataclass(frozen=True)
class DelayPlan:
    """How a job that must wait ``delay`` seconds (a delayed start or a retry) gets run.

    The ETA-window rule, stated once: a wait up to ``PULSE_ETA_WINDOW_SECONDS`` is a
    Celery ETA message (``countdown``), watched from one lease after it is due; a
    longer wait sends no message at all (``countdown`` is ``None``) and the recovery
    sweep publishes the job when it is due (``watch_at == due_at``).
    """

    due_at: float
    countdown: float | None
    watch_at: float

    @property
    def eta_message(self) -> bool:
        return self.countdown is not None


def plan_delay(delay: float, *, now: float, eta_window_seconds: float, lease_seconds: float) -> DelayPlan:
    """The ETA-window rule for one wait of ``delay`` seconds from ``now``."""
    due = now + delay
    if delay <= eta_window_seconds:
        return DelayPlan(due_at=due, countdown=delay, watch_at=due + lease_seconds)
    return DelayPlan(due_at=due, countdown=None, watch_at=due)


@functools.cache
def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """The one rate-limit parser: ``"100/second;5000/hour"`` (``limits`` notation) as items.

    Raises ``ValueError`` on a bad or empty one, on a window that lets nothing through
    (``0/second``: the execution gate's window lists keep ``amount`` starts, so a limit of 0
    would keep every start, unbounded) and on a window longer than
    ``MAX_RATE_WINDOW_SECONDS``. The ``limits`` library is imported here, on first use, so
    that importing the handler API does not load it.
    """
    from limits import parse_many
    from limits.util import SEPARATORS, SINGLE_EXPR

    items = tuple(parse_many(text))
    if not items:
        raise ValueError(f"no rate limit in {text!r}")
    for part in SEPARATORS.split(text):  # limits reads "5/0 minutes" as 5 a minute
        found = SINGLE_EXPR.match(part)
        if found and found.group(3) is not None and int(found.group(3)) == 0:
            raise ValueError(f"{part.strip()!r} has a window of 0; use 1 or more")
    for item in items:
        if item.amount < 1:
            raise ValueError(f"{item.amount} per window lets nothing through; each limit allows at least 1")
        if item.get_expiry() > MAX_RATE_WINDOW_SECONDS:
            raise ValueError(f"a window of {item.get_expiry()} s is longer than a year")
    return items


@dataclass(frozen=True)
class ExecutionLimits:
    """A rate limit (``limits`` notation) and/or a most-at-once; ``None``: no limit."""

    rate_limit: str | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.rate_limit is not None:
            parse_rate_limit(self.rate_limit)  # ValueError on a bad one
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")

    @property
    def empty(self) -> bool:
        return self.rate_limit is None and self.max_concurrency is None

    def overridden_by(self, rule: JobTypeRule | None) -> ExecutionLimits:
        """These limits with each one the tenants file sets replaced."""
        if rule is None:
            return self
        return ExecutionLimits(
            rate_limit=rule.rate_limit or self.rate_limit,
            max_concurrency=rule.max_concurrency or self.max_concurrency,
        )
