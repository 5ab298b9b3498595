"""The two HTTP servers a submit is measured on, started the same way.

Pulse runs exactly as ``pulse api`` runs it (``pulse_cli.cli.api_command``: its server,
worker class, worker count and preloading). The bare endpoint runs with that same
command, only its config and app swapped for ``bench.plain_gunicorn_conf`` (which
copies the server settings of ``pulse_api.gunicorn_conf``) and
``bench.plain_stack:create_flask_app()``; it publishes to the bench's private Redis.
"""

from __future__ import annotations

from pulse_cli import cli

#: As ``pulse api``'s default.
API_WORKERS = 2
PLAIN_CONFIG = "python:bench.plain_gunicorn_conf"
PLAIN_APP = "bench.plain_stack:create_flask_app()"


def pulse_api(port: int, workers: int = API_WORKERS) -> list[str]:
    return cli.api_command("127.0.0.1", port, workers)


def bare_api(port: int, workers: int = API_WORKERS) -> list[str]:
    command = pulse_api(port, workers)
    if cli.GUNICORN_CONFIG not in command or cli.WSGI_APP not in command:
        raise RuntimeError(
            f"pulse api no longer runs gunicorn with a config and an app: {command}; update bench/servers.py"
        )
    return [
        PLAIN_CONFIG if arg == cli.GUNICORN_CONFIG else PLAIN_APP if arg == cli.WSGI_APP else arg for arg in command
    ]
