"""The worker's Celery app: ``celery -A pulse_worker.app worker`` runs it.

Settings come from ``PULSE_*`` variables (and the tenants file, when
``PULSE_TENANTS_FILE`` is set: the shared queue's name and execution-limit
overrides, re-read when it changes); handler modules are imported when the
worker starts (before the pool forks), not when Flower or ``inspect`` import this.
Start-up stops, with a message, if the broker's visibility timeout could redeliver
a message that is still in use, if no handler is registered, or if Redis may evict
(``pulse_core.redis_client.check_durability``). A worker left with Celery's default
name (``celery@<host>``) is given a unique one (``pulse-<pid>-<random>@<host>``).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery import signals
from celery.utils.nodenames import default_nodename

from pulse_core.broker.celery_app import WORKER_ENV, check_visibility_timeout, create_celery
from pulse_core.broker.routing import shared_queue
from pulse_core.errors import ConfigError
from pulse_core.handlers import load_handler_modules, registry
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.redis_client import check_at_start
from pulse_core.settings import Settings
from pulse_core.tenants import TenantsSource
from pulse_worker import observe
from pulse_worker.announcer import announcer_step
from pulse_worker.guardian import guardian_step
from pulse_worker.runtime import WorkerRuntime, unique_worker_name
from pulse_worker.shutdown import bound_shutdown
from pulse_worker.task import install

log = logging.getLogger("pulse.worker")


def _settings() -> tuple[Settings, TenantsSource | None, HttpHandlerSettings]:
    try:
        settings = Settings.from_process_env(os.environ)
        tenants = TenantsSource.load(settings.tenants_file) if settings.tenants_file else None
        http_settings = HttpHandlerSettings.from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(f"pulse: bad setting: {exc}") from None
    return settings, tenants, http_settings


settings, tenants, http_settings = _settings()
app = create_celery(settings)
if tenants is not None:
    # A worker given no queue consumes the shared queue.
    app.conf.task_default_queue = shared_queue(tenants.config, settings.default_queue)
runtime = WorkerRuntime.build(settings, registry, tenants, http_settings)
run_job_task, dead_letter_task = install(app, runtime)
app.steps["worker"].add(announcer_step(runtime))
app.steps["worker"].add(guardian_step(runtime))
observe.install_signals(settings)


@signals.celeryd_init.connect
def _unique_name(sender: Any, instance: Any, **_: Any) -> None:
    """A worker left with Celery's default name (``celery@<host>``, the same for every
    worker on a host) gets a unique one; ``--hostname`` (``pulse worker --hostname``) wins."""
    if instance.hostname == default_nodename(None):
        instance.hostname = unique_worker_name()


@signals.worker_init.connect
def _load_handlers(**_: Any) -> None:
    try:
        check_at_start(settings.redis_url, settings.broker_url, log)
        load_handler_modules(settings.handler_modules)
        if not registry.job_types():
            raise ConfigError(
                "no handlers registered: set PULSE_HANDLER_MODULES to the modules that register them "
                f"(now {','.join(settings.handler_modules) or 'empty'}), or install a package that "
                "declares them under the 'pulse.handlers' entry-point group"
            )
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


@signals.worker_ready.connect
def _bound_shutdown(**_: Any) -> None:
    """Celery's soft shutdown (SIGTERM remapped, or SIGQUIT) ends in a bounded time
    (``pulse_worker.shutdown``); a plain warm shutdown keeps Celery's own behaviour."""
    remapped = os.environ.get("REMAP_SIGTERM") == WORKER_ENV["REMAP_SIGTERM"]
    wrapped = (signal.SIGTERM, signal.SIGQUIT) if remapped else (signal.SIGQUIT,)
    bound_shutdown(settings.soft_shutdown_seconds, signals=wrapped)
