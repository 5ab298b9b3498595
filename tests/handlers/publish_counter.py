"""Counts, in Redis, the ``pulse.run_job`` messages a worker publishes that wait or repeat:
those with an ETA (a countdown: a deferral, a Celery retry's backoff) and Celery retries
(``retries`` > 0). Loaded as a handler module (it registers no handler); the tests read
``publish-counter:eta`` and ``publish-counter:retries``."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import before_task_publish
from redis import Redis

ETA = "publish-counter:eta"
RETRIES = "publish-counter:retries"

_redis: Redis | None = None


@before_task_publish.connect
def _count(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    global _redis
    if sender != "pulse.run_job" or not headers:
        return
    if _redis is None:
        _redis = Redis.from_url(os.environ["PULSE_REDIS_URL"])
    if headers.get("eta"):
        _redis.incr(ETA)
    if int(headers.get("retries") or 0) > 0:
        _redis.incr(RETRIES)
