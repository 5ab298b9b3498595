"""Prometheus metrics: what happened to jobs, per tenant and jobType, and how long it took.

The metric objects live here and are changed only through the small named
functions below, so call sites stay one line. Label values come only from
configuration (tenant ids of the tenants file), the registry of live jobTypes,
and fixed enums (reasons, outcomes): never from request text, so the number of
series stays bounded. Anything else is recorded as ``unknown``.

Multiprocess-safe through prometheus_client's multiprocess mode: when
``PROMETHEUS_MULTIPROC_DIR`` is set *before this module is imported*, every
process (gunicorn worker, prefork child) writes its values to files there, and
``exposition_registry`` sums them. ``pulse api`` and ``pulse worker`` set it.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pulse_core.jobs import Job

log = logging.getLogger("pulse.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"

QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class RejectReason(enum.StrEnum):
    """Why a submission was refused (the ``reason`` label)."""

    RATE_LIMIT = "rate_limit"
    BACKLOG = "backlog"
    STORAGE_BUDGET = "storage_budget"
    VALIDATION = "validation"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"


class Outcome(enum.StrEnum):
    """How an attempt (or a job) ended."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEAD = "dead"
    CANCELLED = "cancelled"


_LABELS = ("tenant", "job_type")

SUBMITTED = Counter("pulse_jobs_submitted", "Jobs accepted by the API (2xx).", _LABELS)
REJECTED = Counter("pulse_jobs_rejected", "Submissions refused, by reason.", (*_LABELS, "reason"))
STARTED = Counter("pulse_jobs_started", "Attempts a worker started.", _LABELS)
FINISHED = {
    Outcome.SUCCEEDED: Counter("pulse_jobs_succeeded", "Jobs that succeeded.", _LABELS),
    Outcome.RETRIED: Counter("pulse_jobs_retried", "Failed attempts that will be retried.", _LABELS),
    Outcome.DEAD: Counter("pulse_jobs_dead", "Jobs dead-lettered (no more attempts).", _LABELS),
    Outcome.CANCELLED: Counter(
        "pulse_jobs_cancelled", "Jobs cancelled (before or, cooperatively, while running).", _LABELS
    ),
}
HTTP_DELIVERIES = Counter(
    "pulse_http_deliveries",
    "HTTP handler deliveries, by response class (2xx, 4xx, 5xx, timeout, connection, refused, ...).",
    (*_LABELS, "response_class"),
)
DEFERRALS = Counter(
    "pulse_execution_limit_deferrals",
    "Times a job was put back because an execution limit (concurrency) was reached.",
    _LABELS,
)
QUEUE_WAIT = Histogram(
    "pulse_job_queue_wait_seconds",
    "Time from when a job (or its replay) was due to the start of its first attempt; "
    "a deliberate delay and time dead before a replay do not count.",
    _LABELS,
    buckets=QUEUE_WAIT_BUCKETS,
)
RUN_TIME = Histogram(
    "pulse_job_run_seconds",
    "Time one attempt ran, from claim to the recorded outcome.",
    _LABELS,
    buckets=RUN_BUCKETS,
)


class _Switch:
    #: ``PULSE_METRICS=off`` turns recording off (the bench compares both).
    enabled = True


_switch = _Switch()


def set_enabled(enabled: bool) -> None:
    """Record metrics in this process (the default), or not at all."""
    _switch.enabled = enabled


def job_submitted(tenant: str, job_type: str, count: int = 1) -> None:
    """The API accepted ``count`` jobs of ``job_type`` (call after they were admitted); a
    batch counts each (tenant, jobType) once, not once per job."""
    if not _switch.enabled:
        return
    SUBMITTED.labels(tenant, job_type).inc(count)


def job_rejected(tenant: str | None, job_type: str | None, reason: RejectReason) -> None:
    """The API refused a submission. Pass ``None`` for a tenant or jobType not yet validated."""
    if not _switch.enabled:
        return
    REJECTED.labels(tenant or UNKNOWN, job_type or UNKNOWN, reason.value).inc()


def job_started(job: Job) -> None:
    """A worker claimed an attempt; the first attempt also records the queue wait."""
    if not _switch.enabled:
        return
    STARTED.labels(job.tenant_id, job.job_type).inc()
    if job.attempts == 1 and job.started_at:
        wait = _queue_wait(job)
        if wait is not None:
            QUEUE_WAIT.labels(job.tenant_id, job.job_type).observe(wait)


def job_finished(job: Job, outcome: Outcome) -> None:
    """An attempt or the job ended with ``outcome``; a run that happened records its run time."""
    if not _switch.enabled:
        return
    FINISHED[outcome].labels(job.tenant_id, job.job_type).inc()
    if outcome is not Outcome.CANCELLED and job.started_at:
        ran = _seconds_between(job.started_at, None)
        if ran is not None:
            RUN_TIME.labels(job.tenant_id, job.job_type).observe(ran)


def job_cancelled(tenant: str, job_type: str) -> None:
    """A job was cancelled before it ran."""
    if not _switch.enabled:
        return
    FINISHED[Outcome.CANCELLED].labels(tenant, job_type).inc()


def execution_deferred(tenant: str, job_type: str) -> None:
    """A job was put back because an execution limit was reached."""
    if not _switch.enabled:
        return
    DEFERRALS.labels(tenant, job_type).inc()


def _queue_wait(job: Job) -> float | None:
    """From when the cycle was due (not its deliberate delay, not time dead before a
    replay) to the start of its first attempt; a record without ``readyAt`` counts from creation."""
    if job.ready_at is None or not job.started_at:
        return _seconds_between(job.created_at, job.started_at)
    try:
        started = datetime.fromisoformat(job.started_at).timestamp()
    except ValueError:
        return None
    return max(0.0, started - job.ready_at)


def http_delivery(tenant: str, job_type: str, response_class: str) -> None:
    """A worker delivered (or tried to deliver) a job to an HTTP handler."""
    if not _switch.enabled:
        return
    HTTP_DELIVERIES.labels(tenant, job_type, response_class).inc()


def _seconds_between(start_iso: str, end_iso: str | None) -> float | None:
    try:
        start = datetime.fromisoformat(start_iso)
        end = datetime.fromisoformat(end_iso) if end_iso else datetime.now(start.tzinfo)
    except ValueError:
        return None
    return max(0.0, (end - start).total_seconds())


def multiprocess_dir() -> Path | None:
    """The multiprocess directory in force for this process, if any."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(path: Path) -> None:
    """Create ``path`` empty: values left by an earlier run must not be summed into this one."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def exposition_registry(*extra: Collector) -> CollectorRegistry:
    """A registry that sums all processes (multiprocess mode) or this one, plus ``extra``."""
    registry = CollectorRegistry()
    if multiprocess_dir() is not None:
        MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


class _Delegate(Collector):
    """Exposes another registry's metrics inside a registry of our own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self._registry.collect())
