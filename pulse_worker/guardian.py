"""Worker bootsteps, in the main process: keep running attempts' leases alive, and sweep.

Three threads, so a slow sweep never delays a renewal:

- **leases** (every third of ``PULSE_LEASE_SECONDS``): renews the lease of each attempt
  this worker's pool runs, from the main process, not the pool child, so a handler that
  holds the GIL still has a live lease, while a SIGKILLed child (gone from Celery's active
  requests) or a dead worker stops renewing at once. It renews an attempt only until its
  hard time limit (plus a lease) has passed: a pool that enforces no time limit (``solo``,
  ``threads``) cannot keep a hung job ``running`` for ever; its lease lapses and the job
  is recovered. Renewals use a Redis client that gives up after a quarter of a lease; when
  they keep failing (the link to Redis stalls) for half a lease, it stops this worker's
  running attempts before their leases lapse (a prefork pool kills their processes), so the
  attempt that takes over is the only one running.
- **sweep** (every ``PULSE_SWEEP_INTERVAL_SECONDS``): ``pulse_core.store.recovery``.
- **dispatch** (every ``DISPATCH_TICK_SECONDS``): puts back the parked jobs that are due (into
  their tenants' ready sets) or whose run slot was freed without a release
  (``pulse_core.guards.execution_limits``; on a broker other than the job store's Redis it
  publishes the latter itself: ``pulse_worker.release``),
  and, with a Redis broker, fills every queue with waiting jobs up to its dispatch depth
  (``pulse_core.store.dispatch``), so a queue refills even when no attempt ends (its
  workers restarted, its messages were stale copies). With another broker the **pump**
  (every ``PUMP_TICK_SECONDS``) tops the worker's queues up instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_core.broker.celery_app import RUN_JOB_TASK, publish_jobs, queue_lists_checker
from pulse_core.broker.queue_depth import ready_messages
from pulse_core.jobs import Job
from pulse_core.policy import DEFAULT_HARD_TIMEOUT_GRACE_SECONDS
from pulse_core.redis_client import connect_impatient
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.job_store import JobStore, RecheckPolicy
from pulse_core.store.recovery import sweep
from pulse_core.submission.parked import parked_message
from pulse_worker.release import DISPATCHED_PRIORITY, publish_released
from pulse_worker.runtime import WorkerRuntime, lease_owner

log = logging.getLogger("pulse.worker")

#: Renewals failing for this share of a lease: stop the attempts before their leases lapse.
#: A renewal runs every third of a lease and gives up after a quarter of one, so the first
#: failure past this share comes at about 0.6 of a lease: before the lease lapses.
FENCE_AFTER_LEASE_SHARE = 1 / 2
#: How often a worker dispatches the queues with waiting jobs (one round trip).
DISPATCH_TICK_SECONDS = 1.0
#: With a broker other than the job store's Redis: how often a worker tops its queues up.
PUMP_TICK_SECONDS = 0.2
#: A renewal waits at most this share of a lease for Redis, and never retries.
RENEWAL_TIMEOUT_LEASE_SHARE = 1 / 4


def _active_requests() -> list[Any]:
    for _ in range(3):  # the set can change under us; try again
        try:
            return [r for r in list(worker_state.active_requests) if r.type == RUN_JOB_TASK and r.args]
        except RuntimeError:
            continue
    return []


def _within_time_limit(request: Any, now: float, longest: float, lease_seconds: float) -> bool:
    """Whether ``request`` still runs within its hard time limit plus a lease."""
    started = getattr(request, "time_start", None)
    if not started:
        return True
    hard = (getattr(request, "time_limits", None) or (None, None))[1] or longest
    return now - started <= hard + lease_seconds


def running_attempts(
    worker_name: str, *, longest: float = float("inf"), lease_seconds: float = 0.0
) -> list[tuple[str, str]]:
    """``(job id, lease owner)`` of each ``pulse.run_job`` attempt this worker's pool runs,
    leaving out any that ran past its hard time limit (plus a lease): those are let go."""
    now = time.time()
    # `type` is the task name; `name` would be the shadow (the jobType).
    return [
        (r.args[0], lease_owner(worker_name, r.id))
        for r in _active_requests()
        if _within_time_limit(r, now, longest, lease_seconds)
    ]


def fence(worker: Any) -> int:
    """Stop this worker's running attempts (their leases are about to lapse unrenewed)."""
    stopped = 0
    for request in _active_requests():
        try:
            request.terminate(worker.pool, signal="SIGKILL")
            stopped += 1
        except Exception:  # a pool that cannot kill (threads, solo): the lease still lapses
            log.error("job %s: could not stop its attempt; its lease will lapse", request.args[0], exc_info=True)
    return stopped


def _every(stop: threading.Event, seconds: float, step: Callable[[], None], name: str) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(seconds):
            try:
                step()
            except Exception:  # a Redis or broker blip must not kill the thread
                log.warning("%s failed; will retry", name, exc_info=True)

    thread = threading.Thread(target=loop, name=f"pulse-{name}", daemon=True)
    thread.start()
    return thread


def consumed_queues(worker: Any) -> set[str]:
    """The queues this worker consumes (``-Q``, or the default queue)."""
    return set(worker.app.amqp.queues.consume_from or {}) or {worker.app.conf.task_default_queue}


def pump_queues(app: Any, store: JobStore, fair: Dispatcher, consumed: set[str]) -> int:
    """Top up each of the worker's queues (``consumed``) with waiting jobs to the queue's
    dispatch depth (``Dispatcher.depth``) of ready messages on a broker other than the job store's Redis:
    take them in fair order, publish them at one priority. Returns how many went. A job
    taken but not published stays queued and watched: the sweep republishes it."""
    sent = 0
    for queue in fair.queues():
        if queue not in consumed:
            continue
        room = fair.depth(queue) - ready_messages(app, queue)
        if room <= 0:
            continue
        jobs = [job for job in store.get_listed(fair.take(queue, room)) if job is not None]  # no payload
        count, error = publish_jobs(
            app, ((job, None) for job in jobs), (KombuError, OSError, RedisError), priority=DISPATCHED_PRIORITY
        )
        sent += count
        if error is not None:
            log.warning("dispatch: %d of %d jobs of %s not published: %s", len(jobs) - count, len(jobs), queue, error)
    return sent


def guardian_step(runtime: WorkerRuntime) -> type[bootsteps.StartStopStep]:
    """A bootstep class bound to ``runtime`` (Celery instantiates steps itself)."""

    class AttemptGuardian(bootsteps.StartStopStep):
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._stop = threading.Event()
            self._last_renewal = time.monotonic()

        def start(self, worker: Any) -> None:
            settings = runtime.settings
            longest = float(settings.timeout_cap_seconds + DEFAULT_HARD_TIMEOUT_GRACE_SECONDS)
            # Renewals on a client of their own that gives up in time, so a stalled link
            # is noticed while the leases still hold.
            timeout = RENEWAL_TIMEOUT_LEASE_SHARE * settings.lease_seconds
            leases = JobStore(connect_impatient(settings.redis_url, timeout=timeout))

            def renew() -> None:
                attempts = running_attempts(worker.hostname, longest=longest, lease_seconds=settings.lease_seconds)
                try:
                    leases.refresh_leases(attempts, settings.lease_seconds)
                except Exception:
                    stalled = time.monotonic() - self._last_renewal
                    if attempts and stalled >= FENCE_AFTER_LEASE_SHARE * settings.lease_seconds:
                        log.error(
                            "leases not renewed for %.1f s: stopping %d running attempt(s)", stalled, len(attempts)
                        )
                        fence(worker)
                    raise
                self._last_renewal = time.monotonic()

            fair = runtime.store.dispatcher

            def publish(jobs: list[Job]) -> int:
                if fair is not None:
                    # Parked due now: the tick puts each into its tenant's ready set, so a
                    # tenant's many recovered jobs (lapsed 202 leases, say) take its turns
                    # rather than all going ahead of every other tenant's next job (on another
                    # broker the pump then publishes them, in that order, at one priority).
                    try:
                        runtime.gate.park_now([(job.job_id, parked_message(worker.app, fair, job)) for job in jobs])
                    except RedisError as exc:
                        log.warning("sweep: %d recovered jobs not parked: %s", len(jobs), exc)
                        return 0
                    return len(jobs)
                sent, error = publish_jobs(worker.app, ((job, None) for job in jobs), (KombuError, OSError, RedisError))
                if error is not None:
                    log.warning(
                        "sweep: %d of %d recovered jobs not republished: %s", len(jobs) - sent, len(jobs), error
                    )
                return sent

            recheck = RecheckPolicy(lapsed=settings.lease_seconds, queued=settings.queued_check_seconds)
            waiting_lists = queue_lists_checker(settings)

            def sweep_once() -> None:
                sweep(
                    runtime.redis,
                    runtime.store,
                    publish,
                    waiting_lists=waiting_lists,
                    recheck=recheck,
                    budget_seconds=max(1.0, settings.sweep_interval_seconds),
                )

            def dispatch() -> None:
                if fair is None:
                    return
                released = runtime.gate.release_parked(broker_elsewhere=not fair.inline)
                if not fair.inline:  # handed a freed run slot: this worker publishes them at once
                    publish_released(
                        worker.app, runtime.store, released.to_publish, check_in=settings.queued_check_seconds
                    )
                    return
                if released.to_publish:  # parked by a process whose broker is not this Redis
                    log.warning(
                        "%d released job(s) were parked by a worker or API on another broker; "
                        "every process on one Redis must use the same broker (published to this one)",
                        len(released.to_publish),
                    )
                    # Their release pushed their checks on: left to the sweep, they would wait a
                    # queued check or more. This worker's broker is one their workers consume.
                    publish_released(
                        worker.app, runtime.store, released.to_publish, check_in=settings.queued_check_seconds
                    )
                fair.dispatch_all(consumed_queues(worker))

            def pump() -> None:
                if fair is not None and not fair.inline:
                    pump_queues(worker.app, runtime.store, fair, consumed_queues(worker))

            _every(self._stop, settings.lease_seconds / 3, renew, "leases")
            _every(self._stop, settings.sweep_interval_seconds, sweep_once, "sweep")
            _every(self._stop, DISPATCH_TICK_SECONDS, dispatch, "dispatch")
            if fair is not None and not fair.inline:
                _every(self._stop, PUMP_TICK_SECONDS, pump, "pump")

        def stop(self, worker: Any) -> None:
            self._stop.set()

    return AttemptGuardian
