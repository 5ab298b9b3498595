"""Handlers that leave a witness in Redis each time they start, for the fault tests.

Each start appends ``{"attempt", "cycle", "t", "pid"}`` to ``witness:<jobId>``: an
account of handler runs kept outside Pulse's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from redis import Redis

from pulse_core.context import JobContext
from pulse_core.errors import JobCancelled, RetryableError
from pulse_core.handlers import handler

_redis: Redis | None = None


def witness_key(job_id: str) -> str:
    return f"witness:{job_id}"  # as tests.support.witness_key


def _witness(ctx: JobContext) -> None:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["PULSE_REDIS_URL"])
    entry = {"attempt": ctx.attempt, "t": time.time(), "pid": os.getpid()}
    _redis.rpush(witness_key(ctx.job_id), json.dumps(entry))


@handler("witness.sleep", max_retries=3, backoff=0.1, backoff_max=0.5)
def sleep(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    _witness(ctx)
    time.sleep(float(payload["seconds"]))
    return {"slept": payload["seconds"]}


@handler("witness.flaky", max_retries=4, backoff=0.4, backoff_max=0.8)
def flaky(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    _witness(ctx)
    if ctx.attempt <= int(payload["failTimes"]):
        raise RetryableError(f"failing attempt {ctx.attempt}")
    return {"attempts": ctx.attempt}


@handler("witness.crash", max_retries=3)
def crash(payload: Mapping[str, Any], ctx: JobContext) -> None:
    """SIGKILL the pool process running it: a job that always kills its worker."""
    _witness(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@handler("witness.cooperative")
def cooperative(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run until cancelled (or ``seconds`` pass), checking ``ctx.cancel_requested()``."""
    _witness(ctx)
    deadline = time.monotonic() + float(payload.get("seconds", 30))
    while time.monotonic() < deadline:
        if ctx.cancel_requested():
            raise JobCancelled("stopped on request")
        time.sleep(0.05)
    return {"finished": True}
