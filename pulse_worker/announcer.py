"""A worker bootstep that announces its jobTypes in Redis, at start and on a heartbeat."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from pulse_core.store.job_types import announce
from pulse_worker.runtime import WorkerRuntime

log = logging.getLogger("pulse.worker")


def announcer_step(runtime: WorkerRuntime) -> type[bootsteps.StartStopStep]:
    """A bootstep class bound to ``runtime`` (Celery instantiates steps itself)."""

    class JobTypeAnnouncer(bootsteps.StartStopStep):
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def start(self, worker: Any) -> None:
            ttl = runtime.settings.job_type_ttl_seconds
            job_types = runtime.registry.job_types()
            announce(runtime.redis, job_types, ttl, runtime.registry.policies())
            log.info("announced jobTypes: %s", ", ".join(sorted(job_types)) or "(none)")
            self._thread = threading.Thread(target=self._beat, args=(ttl,), name="pulse-announcer", daemon=True)
            self._thread.start()

        def stop(self, worker: Any) -> None:
            self._stop.set()

        def _beat(self, ttl: int) -> None:
            while not self._stop.wait(ttl / 3):
                try:
                    registry = runtime.registry
                    announce(runtime.redis, registry.job_types(), ttl, registry.policies())
                except Exception:  # a Redis blip must not kill the heartbeat
                    log.warning("could not announce jobTypes; will retry", exc_info=True)

    return JobTypeAnnouncer
