"""gunicorn settings for the Pulse API: ``gunicorn -c python:pulse_api.gunicorn_conf``.

Logs (gunicorn's own, its access log and the app's) go to stderr as one JSON
object per line (``PULSE_LOG_FORMAT=text`` for plain text). A gunicorn worker
that exits is marked dead for the Prometheus multiprocess collector. The master
serves the metrics on ``PULSE_API_METRICS_PORT`` (never on the public port).
"""

from __future__ import annotations

# gevent workers need the standard library patched before the app is preloaded in
# this (the master) process. `pulse api` (pulse_api.serve) has patched it already,
# before gunicorn imported ssl; this covers `gunicorn -c python:pulse_api.gunicorn_conf`.
from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from gunicorn import glogging  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402

from pulse_api import server_errors  # noqa: E402
from pulse_api.services import EXTENSION_KEY  # noqa: E402
from pulse_core.settings import DEFAULT_LOG_FORMAT, SWITCH  # noqa: E402
from pulse_core.telemetry import tracing  # noqa: E402
from pulse_core.telemetry.logs import gunicorn_logconfig  # noqa: E402
from pulse_core.telemetry.metrics import multiprocess_dir  # noqa: E402

server_errors.install()  # gunicorn's own refusals (414, 431, 400) as problem documents

ACCESS_LOG = "PULSE_API_ACCESS_LOG"


class AccessLogOnlyWhenOn(glogging.Logger):
    """gunicorn's logger, its access line built only when the access log is on: gunicorn
    builds each request's atoms (a dict of ~30 entries) before the logger's level is
    checked, measurably per submit."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


#: The access log (one line per request) is off unless ``PULSE_API_ACCESS_LOG=on``: the
#: app logs each accepted job with its ids already, refusals are counted in metrics, and
#: a proxy in front usually logs access too (docs/operations.md).
logger_class = AccessLogOnlyWhenOn
logconfig_dict = gunicorn_logconfig(
    os.environ.get("PULSE_LOG_FORMAT") or DEFAULT_LOG_FORMAT,
    access_log=SWITCH.parse(ACCESS_LOG, os.environ.get(ACCESS_LOG) or "off"),
)
#: The app is loaded once, in the master: a SIGHUP then starts workers from a config
#: that was valid, and each worker re-reads the tenants file itself (keeping the config
#: in force when the file is bad). Tracing holds threads, so it starts after the fork.
preload_app = True
#: Slow clients: each connection is a greenlet, so clients that send their headers
#: slowly (or never) hold no thread and no process; submits keep being answered. At
#: most ``worker_connections`` connections per worker process; kept-alive ones close
#: after ``keepalive`` seconds idle. In production put a buffering proxy in front
#: (docs/operations.md). Measured: sync workers stopped answering with 2 slow clients,
#: gthread (32 threads) with 500; gevent answered every submit with 500 open.
#: Keep-alive works with gevent workers: a client reusing its connection sends every
#: submit on one socket, never told ``Connection: close`` (checked with http.client and
#: wrk, docs/operations.md).
worker_class = "gevent"
worker_connections = 1000
keepalive = 5


def services_of(app: Any) -> Any:
    return app.extensions[EXTENSION_KEY]


def when_ready(server: Any) -> None:
    """The metrics endpoint, served by the master (it sums every worker's files)."""
    from pulse_api import observability, wsgi

    settings = services_of(wsgi.app).settings
    if settings.api_metrics_port:
        observability.serve_metrics(wsgi.app, settings.api_metrics_host, settings.api_metrics_port)
        server.log.info("metrics on http://%s:%s/metrics", settings.api_metrics_host, settings.api_metrics_port)


def pre_fork(server: Any, worker: Any) -> None:
    """The preloaded app's objects out of the workers' garbage collection (``gc.freeze``):
    they live as long as the process, yet every full collection walked them all, and a
    500-job batch triggers several. Measured in process: collections took 12 -> 4 µs a
    batch job. Also keeps the collector from writing to (and so copying) shared pages."""
    gc.collect()
    gc.freeze()


def post_fork(server: Any, worker: Any) -> None:
    from pulse_api import observability, wsgi

    if tracing.configure_tracing("pulse-api") is not None:
        observability.instrument_tracing(wsgi.app)


def child_exit(server: Any, worker: Any) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)
