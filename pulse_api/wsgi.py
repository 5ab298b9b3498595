"""The WSGI entry point for gunicorn: ``gunicorn pulse_api.wsgi:app``.

gunicorn imports this in each worker process after forking (Pulse never uses
``--preload``), so the tracing provider and its export thread are per process.
"""

from __future__ import annotations

from pulse_api.app import create_app
from pulse_core import telemetry
from pulse_core.errors import ConfigError

telemetry.configure_tracing("pulse-api")
try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"pulse api: bad setting: {exc}") from None
