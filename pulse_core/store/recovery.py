"""The recovery sweep: republish jobs whose message or worker was lost.

Every job that is not final has a deadline in ``keys.WATCH`` (see
``pulse_core.store.job_store``), and each worker runs this sweep every
``PULSE_SWEEP_INTERVAL_SECONDS``; a Redis lock lets one run at a time. A job is
overdue when

- it is ``queued`` and nothing claimed it within ``PULSE_QUEUED_CHECK_SECONDS``:
  its message may be lost (a Redis error failed it before the claim, a worker died
  between taking it off the list and recording it, the API died before publishing
  it). One waiting in its ready set (``pulse_core.store.dispatch``) or parked on an
  execution limit is not lost: its check is re-armed. While its queue still holds
  messages it gets a few more checks (its message is probably behind them); then it
  is republished;
- it is ``running`` and its lease lapsed (its worker was SIGKILLed, lost its host,
  or hit the hard time limit): the new message starts the next attempt, and the
  crashed one counts, so a job that always kills its worker ends ``dead``;
- it is ``scheduled`` or ``retrying`` and its due time passed by more than a lease
  (its ETA message was held by a worker that died), or its delay was too long for
  an ETA message at all (it is published when due). Released from parking when due,
  its message may still wait behind others: it gets the same few more checks while its
  queue holds messages.

A republished job is looked at again after back-off (the base, then twice, four
times... up to an hour), so another copy goes out only if that one is lost too.
A redelivered copy that also turns up is harmless: the claim lets one attempt
start once. One sweep works through everything overdue, 200 jobs per two round
trips, within a time budget (the rest waits for the next sweep).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript
from pulse_core.store.job_store import JobStore, RecheckPolicy

log = logging.getLogger("pulse.recovery")

#: Jobs looked at per round trip; a sweep goes on while there are more and time is left.
SWEEP_BATCH = 200

#: Deletes the sweep lock only if this sweep still holds it; ``True`` when released.
_RELEASE = LuaScript("pulse_core.store", "release_lock", bool)


def sweep(
    redis: Redis,
    store: JobStore,
    publish: Callable[[list[Job]], int],
    *,
    waiting_lists: Callable[[str, str, int], list[str]],
    recheck: RecheckPolicy,
    budget_seconds: float,
) -> int:
    """One sweep, if no other worker is sweeping; return how many jobs were republished.

    ``publish`` sends a batch of jobs and answers how many went; a job it could not
    send stays overdue and is retried at its next recheck.
    """
    token = uuid.uuid4().hex
    lock_ms = max(1, int(budget_seconds * 2000))
    if not redis.set(keys.SWEEP_LOCK, token, nx=True, px=lock_ms):
        return 0
    republished = 0
    stop_at = time.monotonic() + budget_seconds
    try:
        while True:
            overdue = store.overdue(SWEEP_BATCH)
            if not overdue:
                break
            jobs = store.recover_many(overdue, waiting_lists=waiting_lists, recheck=recheck)
            if jobs:
                republished += publish(jobs)
                for job in jobs:
                    log.warning(
                        "recovered job %s (%s, %s after attempt %d): republished",
                        job.job_id,
                        job.job_type,
                        job.state.value,
                        job.attempts,
                    )
            if len(overdue) < SWEEP_BATCH or time.monotonic() >= stop_at:
                break
    finally:
        _RELEASE.register(redis)(keys=[keys.SWEEP_LOCK], args=[token])
    return republished
