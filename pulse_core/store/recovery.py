"""The recovery sweep: republish jobs whose worker died or whose message went missing.

Each worker runs it every ``PULSE_SWEEP_INTERVAL_SECONDS``; a Redis lock lets one
run at a time. A job is overdue when

- it is ``running`` and its lease lapsed (its worker was SIGKILLed, lost its host,
  or hit the hard time limit): the new message starts the next attempt, and the
  crashed one counts, so a job that always kills its worker ends ``dead``;
- it is ``scheduled`` or ``retrying`` and its due time passed by more than a lease
  (its ETA message was held by a worker that died), or its delay was too long for
  an ETA message at all (it is published when due).

A redelivered copy of a message that also turns up is harmless: the job store's
claim lets one attempt start once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript
from pulse_core.store.job_store import JobStore

log = logging.getLogger("pulse.recovery")

#: Jobs looked at per sweep; the rest wait for the next one.
SWEEP_BATCH = 200

#: Deletes the sweep lock only if this sweep still holds it; ``True`` when released.
_RELEASE = LuaScript("pulse_core.store", "release_lock", bool)


def sweep(
    redis: Redis,
    store: JobStore,
    publish: Callable[[Job], None],
    *,
    lock_seconds: float,
    recheck_after: float,
) -> int:
    """One sweep, if no other worker is sweeping; return how many jobs were republished."""
    token = uuid.uuid4().hex
    if not redis.set(keys.SWEEP_LOCK, token, nx=True, px=max(1, int(lock_seconds * 1000))):
        return 0
    republished = 0
    try:
        for job_id in store.overdue(SWEEP_BATCH):
            job = store.recover(job_id, recheck_after=recheck_after)
            if job is None:
                continue
            publish(job)
            republished += 1
            log.warning(
                "recovered job %s (%s, %s after attempt %d): republished",
                job.job_id,
                job.job_type,
                job.state.value,
                job.attempts,
            )
    finally:
        _RELEASE.register(redis)(keys=[keys.SWEEP_LOCK], args=[token])
    return republished
