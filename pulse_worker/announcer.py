"""A worker bootstep that announces its jobTypes in Redis, at start and on a heartbeat, and
with them its pool concurrency on each queue it consumes (the fair dispatcher's depth:
``pulse_core.store.capacity``)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from pulse_core.store.capacity import announce_capacity, withdraw_capacity
from pulse_core.store.job_types import announce
from pulse_worker.guardian import consumed_queues
from pulse_worker.runtime import WorkerRuntime

log = logging.getLogger("pulse.worker")


def pool_concurrency(worker: Any) -> int:
    """How many jobs ``worker``'s pool runs at once (its autoscaler's maximum, if any)."""
    return int(getattr(worker, "max_concurrency", None) or worker.concurrency or 1)


def announcer_step(runtime: WorkerRuntime) -> type[bootsteps.StartStopStep]:
    """A bootstep class bound to ``runtime`` (Celery instantiates steps itself)."""

    class JobTypeAnnouncer(bootsteps.StartStopStep):
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None
            self._capacity: tuple[str, int, list[str]] | None = None

        def start(self, worker: Any) -> None:
            ttl = runtime.settings.job_type_ttl_seconds
            self._capacity = (worker.hostname, pool_concurrency(worker), sorted(consumed_queues(worker)))
            self._announce(ttl)
            _, concurrency, queues = self._capacity
            log.info(
                "announced jobTypes: %s; concurrency %d on %s",
                ", ".join(sorted(runtime.registry.job_types())) or "(none)",
                concurrency,
                ", ".join(queues),
            )
            self._thread = threading.Thread(target=self._beat, args=(ttl,), name="pulse-announcer", daemon=True)
            self._thread.start()

        def stop(self, worker: Any) -> None:
            self._stop.set()
            if self._capacity is not None:
                try:  # its queues' depth shrinks now, not when the announcement lapses
                    withdraw_capacity(runtime.redis, *self._capacity)
                except Exception:
                    log.warning("could not withdraw this worker's capacity; it lapses by itself", exc_info=True)

        def _announce(self, ttl: int) -> None:
            registry = runtime.registry
            queues = self._capacity[2] if self._capacity else ()
            announce(runtime.redis, registry.job_types(), ttl, registry.policies(), queues)
            if self._capacity is not None:
                announce_capacity(runtime.redis, *self._capacity, ttl)

        def _beat(self, ttl: int) -> None:
            while not self._stop.wait(ttl / 3):
                try:
                    self._announce(ttl)
                except Exception:  # a Redis blip must not kill the heartbeat
                    log.warning("could not announce jobTypes; will retry", exc_info=True)

    return JobTypeAnnouncer
