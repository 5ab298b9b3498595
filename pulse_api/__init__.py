"""Pulse control plane: the HTTP API. Never imports ``pulse_worker``."""

from pulse_api.app import create_app

__all__ = ["create_app"]
