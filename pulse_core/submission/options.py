"""A job's ``options`` at submit: retries and timeout within the operator caps, delays.

Precedence is in ``pulse_core.policy``: a per-job option beats the jobType's
declared policy, which beats the defaults; per-job values above the caps are
refused (422, naming the option) rather than silently lowered. A delay follows the
ETA-window rule (``pulse_core.policy.plan_delay``), as a retry's backoff does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pulse_core.errors import InvalidParameter
from pulse_core.jobs import DEFAULT_PRIORITY
from pulse_core.policy import RetryPolicy, effective, plan_delay
from pulse_core.settings import Settings


@dataclass(frozen=True)
class JobOptions:
    max_retries: int
    timeout_seconds: int
    #: When a delayed job is due (epoch seconds); ``None`` to run now.
    due_at: float | None = None
    #: For a delayed job: the ETA message's countdown, or ``None`` when the delay is
    #: beyond the ETA window and the recovery sweep publishes it when due.
    countdown: float | None = None
    #: For a delayed job: when the sweep should publish it if nothing started it.
    watch_at: float | None = None
    priority: int = DEFAULT_PRIORITY


def resolve(settings: Settings, policy: RetryPolicy, raw: Mapping[str, Any], *, now: float) -> JobOptions:
    """The effective options of one job, or ``InvalidParameter`` naming the bad one. ``now``:
    Redis' clock (``pulse_core.redis_client.redis_now``), which a delayed job's due time is
    read by, so a host whose clock is off does not move it."""
    max_retries = raw.get("maxRetries")
    if max_retries is not None and max_retries > settings.max_retries_cap:
        raise InvalidParameter("options.maxRetries", f"maxRetries may be at most {settings.max_retries_cap}")
    timeout = raw.get("timeoutSeconds")
    if timeout is not None and timeout > settings.timeout_cap_seconds:
        raise InvalidParameter(
            "options.timeoutSeconds",
            f"timeoutSeconds may be at most {settings.timeout_cap_seconds}",
        )
    retries, seconds = effective(policy, max_retries=max_retries, timeout=timeout)
    delay = _delay(settings, raw, now)
    priority = raw.get("priority", DEFAULT_PRIORITY)
    if delay is None:
        return JobOptions(retries, seconds, priority=priority)
    plan = plan_delay(
        delay, now=now, eta_window_seconds=settings.eta_window_seconds, lease_seconds=settings.lease_seconds
    )
    return JobOptions(retries, seconds, plan.due_at, plan.countdown, plan.watch_at, priority)


def _delay(settings: Settings, raw: Mapping[str, Any], now: float) -> float | None:
    if raw.get("delaySeconds") is not None:
        delay = float(raw["delaySeconds"])
        field = "options.delaySeconds"
    elif raw.get("runAt") is not None:
        run_at: datetime = raw["runAt"]
        delay = max(0.0, run_at.timestamp() - now)
        field = "options.runAt"
    else:
        return None
    if delay > settings.max_delay_seconds:
        raise InvalidParameter(field, f"a job may be delayed by at most {settings.max_delay_seconds} s")
    return delay if delay > 0 else None
