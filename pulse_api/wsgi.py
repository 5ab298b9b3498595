"""The WSGI entry point for gunicorn: ``gunicorn pulse_api.wsgi:app``.

``pulse api`` runs gunicorn with ``pulse_api.gunicorn_conf``, which preloads this
module in the master and starts tracing in each worker after the fork (its
``post_fork`` hook). Under another WSGI server, call
``pulse_core.telemetry.tracing.configure_tracing`` in each worker process, then
``pulse_api.observability.instrument_tracing(app)``.
"""

from __future__ import annotations

from pulse_api.app import create_app
from pulse_core.errors import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"pulse api: bad setting: {exc}") from None
