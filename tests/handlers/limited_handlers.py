"""Handlers under execution limits that record, in Redis, when each run started and how
many of their kind were running at that moment (an account outside Pulse's own)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from redis import Redis

from pulse_core.context import JobContext
from pulse_core.errors import RetryLater
from pulse_core.handlers import handler

_redis: Redis | None = None


def _record(job_type: str, seconds: float) -> None:
    global _redis
    started = time.time()  # first, before this process's first Redis connection is made
    if _redis is None:
        _redis = Redis.from_url(os.environ["PULSE_REDIS_URL"])
    running = _redis.incr(f"limited:{job_type}:running")
    try:
        _redis.rpush(f"limited:{job_type}:starts", repr(started))
        _redis.rpush(f"limited:{job_type}:concurrent", running)
        time.sleep(seconds)
    finally:
        _redis.decr(f"limited:{job_type}:running")


@handler("limited.slots", max_concurrency=2)
def slots(payload: Mapping[str, Any], ctx: JobContext) -> None:
    _record("limited.slots", float(payload.get("seconds", 0.4)))


# Declared generously; the tests' tenants file lowers it to prove the override.
@handler("limited.rate", rate_limit="100/second")
def rate(payload: Mapping[str, Any], ctx: JobContext) -> None:
    _record("limited.rate", 0.0)


@handler("limited.flaky", max_concurrency=1)
def flaky(payload: Mapping[str, Any], ctx: JobContext) -> None:
    """Runs like limited.slots; with ``fail_first``, its first attempt then asks for a retry
    ``retry_in`` seconds later."""
    _record("limited.flaky", float(payload.get("seconds", 0.1)))
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RetryLater(float(payload.get("retry_in", 0.3)))
