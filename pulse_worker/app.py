"""The worker's Celery app: ``celery -A pulse_worker.app worker`` runs it.

Settings come from ``PULSE_*`` variables (and the tenants file, when
``PULSE_TENANTS_FILE`` is set: the shared queue's name and execution-limit
overrides, re-read when it changes); handler modules are imported when the
worker starts (before the pool forks), not when Flower or ``inspect`` import this.
Start-up stops, with a message, if the broker's visibility timeout could redeliver
a message that is still in use.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from pulse_core.broker.celery_app import WORKER_ENV, check_visibility_timeout, create_celery
from pulse_core.broker.routing import shared_queue
from pulse_core.errors import ConfigError
from pulse_core.handlers import load_handler_modules, registry
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.settings import Settings
from pulse_core.tenants import TenantsSource
from pulse_worker import observe
from pulse_worker.announcer import announcer_step
from pulse_worker.guardian import guardian_step
from pulse_worker.lanes import add_lanes_at_setup, lane_watcher_step
from pulse_worker.runtime import WorkerRuntime
from pulse_worker.task import install

log = logging.getLogger("pulse.worker")


def _settings() -> tuple[Settings, TenantsSource | None, HttpHandlerSettings]:
    try:
        settings = Settings.from_env(os.environ)
        tenants = TenantsSource.load(settings.tenants_file) if settings.tenants_file else None
        http_settings = HttpHandlerSettings.from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(f"pulse: bad setting: {exc}") from None
    return settings, tenants, http_settings


settings, tenants, http_settings = _settings()
app = create_celery(settings)
if tenants is not None:
    # A worker given no queue consumes the shared queue (and its tenant lanes).
    app.conf.task_default_queue = shared_queue(tenants.config, settings.default_queue)
runtime = WorkerRuntime.build(settings, registry, tenants, http_settings)
run_job_task, dead_letter_task = install(app, runtime)
app.steps["worker"].add(announcer_step(runtime))
app.steps["worker"].add(guardian_step(runtime))
observe.install_signals(settings)
app.steps["consumer"].add(lane_watcher_step(runtime.redis))


@signals.celeryd_after_setup.connect
def _add_lanes(sender: Any, instance: Any, **_: Any) -> None:
    add_lanes_at_setup(instance.app, runtime.redis)


@signals.worker_init.connect
def _load_handlers(**_: Any) -> None:
    try:
        load_handler_modules(settings.handler_modules)
        longest = max((spec.policy.timeout for spec in registry), default=0)
        check_visibility_timeout(settings, longest)
        if runtime.http is not None:
            runtime.http.registrations.require_key_if_used()
    except ConfigError as exc:
        # SystemExit passes through Celery's signal dispatch, which logs and swallows Exceptions.
        raise SystemExit(f"pulse worker: {exc}") from None
    for name, value in WORKER_ENV.items():
        if os.environ.get(name) != value:
            log.warning(
                "%s is not %s: SIGTERM waits for running jobs with no bound but their time "
                "limits (start workers with `pulse worker`, or set it)",
                name,
                value,
            )
