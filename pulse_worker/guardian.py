"""A worker bootstep, in the main process: keep running attempts' leases alive, sweep.

Leases are refreshed from the main process, not the pool child, so a handler that
holds the GIL still has a live lease, while a SIGKILLed child (gone from Celery's
active requests) or a dead worker stops refreshing at once. The same thread runs
the recovery sweep (``pulse_core.store.recovery``) every ``PULSE_SWEEP_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_core.broker.celery_app import RUN_JOB_TASK, lane_lists_checker, publish_jobs
from pulse_core.jobs import Job
from pulse_core.store.job_store import RecheckPolicy
from pulse_core.store.recovery import sweep
from pulse_worker.runtime import WorkerRuntime, lease_owner

log = logging.getLogger("pulse.worker")


def running_attempts(worker_name: str) -> list[tuple[str, str]]:
    """``(job id, lease owner)`` of each ``pulse.run_job`` request this worker's pool runs."""
    for _ in range(3):  # the set can change under us; try again
        try:
            requests = list(worker_state.active_requests)
            break
        except RuntimeError:
            continue
    else:
        return []
    # `type` is the task name; `name` would be the shadow (the jobType).
    return [(r.args[0], lease_owner(worker_name, r.id)) for r in requests if r.type == RUN_JOB_TASK and r.args]


def guardian_step(runtime: WorkerRuntime) -> type[bootsteps.StartStopStep]:
    """A bootstep class bound to ``runtime`` (Celery instantiates steps itself)."""

    class AttemptGuardian(bootsteps.StartStopStep):
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._stop = threading.Event()

        def start(self, worker: Any) -> None:
            thread = threading.Thread(target=self._loop, args=(worker,), name="pulse-guardian", daemon=True)
            thread.start()

        def stop(self, worker: Any) -> None:
            self._stop.set()

        def _loop(self, worker: Any) -> None:
            settings = runtime.settings
            tick = min(settings.lease_seconds / 3, settings.sweep_interval_seconds)
            next_sweep = time.monotonic()

            def publish(jobs: list[Job]) -> int:
                sent, error = publish_jobs(worker.app, ((job, None) for job in jobs), (KombuError, OSError, RedisError))
                if error is not None:
                    log.warning(
                        "sweep: %d of %d recovered jobs not republished: %s", len(jobs) - sent, len(jobs), error
                    )
                return sent

            recheck = RecheckPolicy(lapsed=settings.lease_seconds, queued=settings.queued_check_seconds)
            waiting_lists = lane_lists_checker(settings, worker.app)

            while not self._stop.wait(tick):
                try:
                    runtime.store.refresh_leases(running_attempts(worker.hostname), settings.lease_seconds)
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + settings.sweep_interval_seconds
                        sweep(
                            runtime.redis,
                            runtime.store,
                            publish,
                            waiting_lists=waiting_lists,
                            recheck=recheck,
                            budget_seconds=max(1.0, settings.sweep_interval_seconds),
                        )
                except Exception:  # a Redis or broker blip must not kill the guardian
                    log.warning("lease refresh or sweep failed; will retry", exc_info=True)

    return AttemptGuardian
