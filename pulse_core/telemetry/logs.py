"""Logs as one JSON object per line, with the ids of the job a line is about.

A job's ids (jobId, tenantId, jobType, attempt, traceId) live in a context
variable for as long as Pulse works on that job; a logging filter copies them
onto every record, so any line logged meanwhile (by Pulse, Celery or a handler)
carries them. Payloads are never put in the context or in a message.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from pulse_core.jobs import Job
from pulse_core.settings import DEFAULT_LOG_FORMAT

#: The fields a job-related line carries, in the order they are written.
JOB_FIELDS = ("jobId", "tenantId", "jobType", "attempt", "traceId")

#: Celery's own per-task INFO lines ("received", "succeeded in") come from places
#: where the job's ids are not known; Pulse's own lines say the same with the ids.
QUIET_LOGGERS = ("celery.app.trace", "celery.worker.strategy")

_job: ContextVar[dict[str, Any] | None] = ContextVar("pulse_job_log_context", default=None)


def job_fields(job: Job) -> dict[str, Any]:
    """The ids a log line about ``job`` carries."""
    return {
        "jobId": job.job_id,
        "tenantId": job.tenant_id,
        "jobType": job.job_type,
        "attempt": job.attempts,
        "traceId": job.trace_id,
    }


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Lines logged inside carry ``fields`` (jobId, ...); the previous context comes back after."""
    token = _job.set(dict(fields))
    try:
        yield
    finally:
        _job.reset(token)


def bind_job(job: Job) -> None:
    """From now on (within the current context), lines carry ``job``'s ids."""
    _job.set(job_fields(job))


def clear_job() -> None:
    """Lines no longer carry a job's ids (end of a request or a task)."""
    _job.set(None)


def current_job_fields() -> dict[str, Any] | None:
    """The job ids lines currently carry, if any."""
    return _job.get()


class JobContextFilter(logging.Filter):
    """Copies the current job's ids onto each record (as ``record.jobId`` etc.)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job.get()
        if fields:
            for name, value in fields.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time, level, logger, message, job ids and any extras."""
    return JsonFormatter(
        "{levelname}{name}{process}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",  # ISO 8601 UTC with microseconds
    )


def text_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def make_handler(stream: IO[str] | None = None, log_format: str = DEFAULT_LOG_FORMAT) -> logging.Handler:
    """A stream handler with Pulse's formatter and the job-context filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else text_formatter())
    handler.addFilter(JobContextFilter())
    return handler


def configure(level: int | str = logging.INFO, log_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Send every logger's records to stderr through Pulse's handler (process-wide)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format=log_format))
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become records too, not bare stderr text
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def gunicorn_logconfig(log_format: str = DEFAULT_LOG_FORMAT, access_log: bool = True) -> dict[str, Any]:
    """A ``logging.config`` dict for gunicorn: its error and access logs, and the app's, as JSON
    (the access log at INFO when ``access_log``, else turned down to WARNING: no line per request)."""
    formatter = "pulse_json" if log_format == "json" else "pulse_text"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": formatter,
        "filters": ["pulse_job"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"pulse_job": {"()": JobContextFilter}},
        "formatters": {
            "pulse_json": {"()": json_formatter},
            "pulse_text": {"()": text_formatter},
        },
        "handlers": {"pulse": handler},
        "root": {"level": "INFO", "handlers": ["pulse"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["pulse"], "propagate": False},
            "gunicorn.access": {
                "level": "INFO" if access_log else "WARNING",
                "handlers": ["pulse"],
                "propagate": False,
            },
        },
    }
