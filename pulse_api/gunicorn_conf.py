"""gunicorn settings for the Pulse API: ``gunicorn -c python:pulse_api.gunicorn_conf``.

Logs (gunicorn's own, its access log and the app's) go to stderr as one JSON
object per line (``PULSE_LOG_FORMAT=text`` for plain text). A gunicorn worker
that exits is marked dead for the Prometheus multiprocess collector.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import multiprocess

from pulse_core.logs import gunicorn_logconfig
from pulse_core.metrics import multiprocess_dir
from pulse_core.settings import DEFAULT_LOG_FORMAT

logconfig_dict = gunicorn_logconfig(os.environ.get("PULSE_LOG_FORMAT") or DEFAULT_LOG_FORMAT)
#: Each worker imports the app itself, after the fork (tracing threads are per process).
preload_app = False


def child_exit(server: Any, worker: Any) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)
