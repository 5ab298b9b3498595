"""The WSGI entry point for gunicorn: ``gunicorn pulse_api.wsgi:app``."""

from __future__ import annotations

from pulse_api.app import create_app
from pulse_core.errors import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"pulse api: bad setting: {exc}") from None
