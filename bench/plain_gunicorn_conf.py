"""gunicorn settings of the bare endpoint: the server settings of ``pulse_api.gunicorn_conf``
(worker class, connections, threads, keep-alive, preloading, timeouts), none of its hooks
(metrics, tracing, problem-document errors), so both sides run on the same server."""

from __future__ import annotations

from pulse_api import gunicorn_conf as _pulse

_SERVER_SETTINGS = (
    "worker_class",
    "worker_connections",
    "threads",
    "keepalive",
    "preload_app",
    "backlog",
    "timeout",
    "graceful_timeout",
    "max_requests",
)

for _name in _SERVER_SETTINGS:
    if hasattr(_pulse, _name):
        globals()[_name] = getattr(_pulse, _name)

loglevel = "warning"
