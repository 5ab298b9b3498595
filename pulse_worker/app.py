"""The worker's Celery app: ``celery -A pulse_worker.app worker`` runs it.

Settings come from ``PULSE_*`` variables; handler modules are imported when the
worker starts (before the pool forks), not when Flower or ``inspect`` import this.
"""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from pulse_core.celery_setup import create_celery
from pulse_core.errors import ConfigError
from pulse_core.handlers import load_handler_modules, registry
from pulse_core.settings import Settings
from pulse_worker import observe
from pulse_worker.announcer import announcer_step
from pulse_worker.runtime import WorkerRuntime
from pulse_worker.task import install


def _settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(f"pulse: bad setting: {exc}") from None


settings = _settings()
app = create_celery(settings)
runtime = WorkerRuntime.build(settings, registry)
run_job_task = install(app, runtime)
app.steps["worker"].add(announcer_step(runtime))
observe.install_signals(settings)


@signals.worker_init.connect
def _load_handlers(**_: Any) -> None:
    try:
        load_handler_modules(settings.handler_modules)
    except ConfigError as exc:
        # SystemExit passes through Celery's signal dispatch, which logs and swallows Exceptions.
        raise SystemExit(f"pulse worker: {exc}") from None
