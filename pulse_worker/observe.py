"""The worker's telemetry: JSON logs, tracing after fork, a Prometheus endpoint, per-job context.

``install_signals`` wires the process-level parts into Celery's signals (only
``pulse_worker.app`` calls it, so importing the task elsewhere changes nothing);
``attempt`` wraps one claimed attempt in its log context, metrics and span.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery import signals
from prometheus_client import start_http_server

from pulse_core.jobs import Job
from pulse_core.settings import Settings
from pulse_core.telemetry import logs, metrics, tracing

log = logging.getLogger("pulse.worker")

SERVICE_NAME = "pulse-worker"
#: Pools whose tasks run in the worker's main process (no fork, no worker_process_init).
_IN_PROCESS_POOLS = {"threads", "eventlet", "gevent"}


@contextlib.contextmanager
def attempt(job: Job) -> Iterator[None]:
    """Around one claimed attempt: lines carry its ids, it counts as started, it has a span."""
    logs.bind_job(job)
    metrics.job_started(job)
    with tracing.job_span(job):
        log.info("job started")
        yield


def install_signals(settings: Settings) -> None:
    """Connect the worker's process-level telemetry to Celery's signals."""
    metrics.set_enabled(settings.metrics_enabled)

    @signals.celeryd_init.connect(weak=False)
    def _json_logs_early(options: Any = None, **_: Any) -> None:
        # Before the worker's start-up checks, whose warnings would otherwise be bare text.
        logs.configure((options or {}).get("loglevel") or logging.INFO, settings.log_format)

    @signals.setup_logging.connect(weak=False)
    def _json_logs(loglevel: Any = logging.INFO, **_: Any) -> None:
        # Connected at all, this receiver replaces Celery's own logging set-up.
        logs.configure(loglevel or logging.INFO, settings.log_format)

    @signals.worker_init.connect(weak=False)
    def _tracing_in_main_process(sender: Any = None, **_: Any) -> None:
        if _pool_name(getattr(sender, "pool_cls", "")) in _IN_PROCESS_POOLS:
            _start_tracing()

    @signals.worker_process_init.connect(weak=False)
    def _tracing_after_fork(**_: Any) -> None:
        _start_tracing()

    @signals.worker_process_shutdown.connect(weak=False)
    def _flush_spans(**_: Any) -> None:
        tracing.shutdown_tracing()

    @signals.worker_ready.connect(weak=False)
    def _serve_metrics(**_: Any) -> None:
        if settings.worker_metrics_port is None or not settings.metrics_enabled:
            return
        if metrics.multiprocess_dir() is None:
            log.warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: the metrics endpoint shows only the "
                "main process (prefork children are missing); `pulse worker` sets it"
            )
        registry = metrics.exposition_registry()
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host, registry)
        log.info(
            "metrics on http://%s:%d/metrics",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
        )


def _start_tracing() -> None:
    if tracing.configure_tracing(SERVICE_NAME) is not None:
        tracing.instrument_celery()


def _pool_name(pool_cls: Any) -> str:
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return name.rsplit(".", 1)[-1].split(":")[0]
