"""Execution limits per jobType (and per tenant x jobType), held across every worker.

    @handler("crm.sync", rate_limit="10/second", max_concurrency=5)

The tenants file can override a jobType's limits (``[job_types."crm.sync"]``) and
give one tenant a limit of its own on top (``[tenants.acme.job_types."crm.sync"]``).
Celery's ``rate_limit`` is per worker; these are counted in Redis, so they hold
however many workers and hosts run the jobType.

A job over a limit is **deferred**, not failed: its message goes back with a short
countdown (the same attempt, so the deferral never counts as an attempt), which
happens before the claim. A crash between the two only leaves a duplicate copy of
the same attempt, which the claim refuses.

- ``max_concurrency``: a semaphore, the sorted set ``keys.concurrency``. Each
  holder is ``<jobId>|<token>``; it counts while its grace (until the claim takes
  the job's lease) runs or while its job is ``running`` under a live lease, so a
  worker that dies leaks its slot only until its lease lapses (``PULSE_LEASE_SECONDS``).
- ``rate_limit``: a **moving window** of start times (exact: at most N starts in
  any window of the limit's length), one window per jobType and per tenant x
  jobType (``keys.execution_rate``), on Redis' clock, all windows taken in one
  script or none. A handler starts a few milliseconds after its gate, so a window
  counts ``RATE_SLACK`` longer than declared (10 % of it, at most 0.25 s): the
  starts themselves never exceed the limit in any window of the declared length.
  The ``limits`` library's moving window cannot do this (its expiry is whole
  seconds on the caller's clock), hence the small script of our own.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

from redis import Redis

from pulse_core import keys
from pulse_core.lua_scripts import LuaScript
from pulse_core.policy import ExecutionLimits, parse_rate_limit
from pulse_core.tenants import TenantsConfig

#: Deferral when every run slot is taken: uniform in [base, 2 * base) seconds.
CONCURRENCY_DEFERRAL_SECONDS = 0.5
#: Smallest deferral when a rate window is full (its reset time is usually later).
MIN_RATE_DEFERRAL_SECONDS = 0.05


def rate_slack(seconds: float) -> float:
    """How much longer than declared a rate window of ``seconds`` is counted."""
    return min(0.25, 0.1 * seconds)


def _acquire_reply(reply: int) -> int | None:
    """``None`` when a slot was taken in every set, else the 1-based index of the first full set."""
    return int(reply) or None


#: Takes a run slot in every set, or none (``pulse_core/guards/lua/acquire_slots.lua``).
_ACQUIRE = LuaScript("pulse_core.guards", "acquire_slots", _acquire_reply)
#: Counts a start in every rate window, or none; the reply is the seconds to wait (0: counted).
_RATE_ACQUIRE = LuaScript("pulse_core.guards", "rate_acquire", float)


__all__ = ["ExecutionGate", "ExecutionLimits", "Verdict", "needs_tenant"]


def _tenant_limits(config: TenantsConfig | None, job_type: str, tenant_id: str) -> ExecutionLimits:
    tenant = config.tenants.get(tenant_id) if config else None
    rule = tenant.job_types.get(job_type) if tenant else None
    if rule is None:
        return ExecutionLimits()
    return ExecutionLimits(rate_limit=rule.rate_limit, max_concurrency=rule.max_concurrency)


def needs_tenant(config: TenantsConfig | None, job_type: str) -> bool:
    """Whether some tenant has limits of its own for ``job_type``."""
    if config is None:
        return False
    return any(
        rule.rate_limit or rule.max_concurrency
        for tenant in config.tenants.values()
        if (rule := tenant.job_types.get(job_type)) is not None
    )


@dataclass(frozen=True)
class Verdict:
    """Run now (holding ``holder``'s slots), or defer by ``defer_seconds``."""

    holder: str | None = None
    slot_keys: tuple[str, ...] = ()
    defer_seconds: float | None = None
    #: "concurrency" or "rate" when deferred.
    reason: str | None = None


class ExecutionGate:
    """Checks and takes a job's execution limits before its attempt is claimed."""

    def __init__(self, redis: Redis, *, grace_seconds: float) -> None:
        self._redis = redis
        self._grace = grace_seconds
        self._acquire = _ACQUIRE.register(redis)
        self._rate_acquire = _RATE_ACQUIRE.register(redis)

    def enter(
        self,
        job_id: str,
        job_type: str,
        tenant_id: str | None,
        declared: ExecutionLimits,
        config: TenantsConfig | None,
    ) -> Verdict:
        """Take a slot and a rate-window hit in every scope, or say how long to defer."""
        scopes: list[tuple[str | None, ExecutionLimits]] = [
            (None, declared.overridden_by(config.job_types.get(job_type) if config else None))
        ]
        if tenant_id is not None:
            scopes.append((tenant_id, _tenant_limits(config, job_type, tenant_id)))
        scopes = [(scope, limits) for scope, limits in scopes if not limits.empty]
        if not scopes:
            return Verdict()
        holder = f"{job_id}|{uuid.uuid4().hex}"
        slots = [(keys.concurrency(job_type, s), lim.max_concurrency) for s, lim in scopes if lim.max_concurrency]
        if slots:
            now = time.time()
            full = self._acquire(
                keys=[key for key, _ in slots],
                args=[holder, repr(now), repr(now + self._grace), keys.job(""), *(most for _, most in slots)],
            )
            if full is not None:
                delay = CONCURRENCY_DEFERRAL_SECONDS * (1 + random.random())
                return Verdict(defer_seconds=delay, reason="concurrency")
        slot_keys = tuple(key for key, _ in slots)
        windows = [
            (keys.execution_rate(job_type, scope, item.amount, item.get_expiry()), item.amount, item.get_expiry())
            for scope, limits in scopes
            for item in (parse_rate_limit(limits.rate_limit) if limits.rate_limit else ())
        ]
        if windows:
            slack = rate_slack(min(seconds for _, _, seconds in windows))
            args: list[float | int] = [slack]
            for _, amount, seconds in windows:
                args += [amount, seconds]
            wait = self._rate_acquire(keys=[key for key, _, _ in windows], args=args)
            if wait > 0:
                self.leave(Verdict(holder=holder, slot_keys=slot_keys))
                delay = max(MIN_RATE_DEFERRAL_SECONDS, wait)
                return Verdict(defer_seconds=delay * (1 + 0.2 * random.random()), reason="rate")
        return Verdict(holder=holder, slot_keys=slot_keys)

    def leave(self, verdict: Verdict) -> None:
        """Give back the run slots ``verdict`` holds."""
        if verdict.holder and verdict.slot_keys:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in verdict.slot_keys:
                    pipe.zrem(key, verdict.holder)
                pipe.execute()
