"""The Celery app Flower watches: ``celery -A pulse_cli.flower_app flower`` (``pulse flower``).

Pulse's settings on kombu's stock Redis transport. Flower picks its broker client by
the connection URL's scheme, and the workers' poison-safe transport shows there as a
class path, not ``redis`` (the Broker tab then said "'redis' broker is not
supported"). Flower consumes no task messages, so it needs no poison safety.
"""

from __future__ import annotations

import os

from pulse_core.broker.celery_app import create_celery
from pulse_core.broker.routing import shared_queue
from pulse_core.errors import ConfigError
from pulse_core.settings import Settings
from pulse_core.tenants import TenantsConfig

try:
    settings = Settings.from_process_env(os.environ)
    tenants = TenantsConfig.load(settings.tenants_file) if settings.tenants_file else None
except ConfigError as exc:
    raise SystemExit(f"pulse flower: bad setting: {exc}") from None

app = create_celery(settings, poison_safe=False)
if tenants is not None:
    # With no worker online, the Broker tab lists the shared queue (as workers name it).
    app.conf.task_default_queue = shared_queue(tenants, settings.default_queue)
