"""Logs as one JSON object per line, with the ids of the job a line is about.

A job's ids (jobId, tenantId, jobType, attempt, traceId) live in a context
variable for as long as Pulse works on that job; a logging filter copies them
onto every record, so any line logged meanwhile (by Pulse, Celery or a handler)
carries them. Payloads are never put in the context or in a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonEncoder, JsonFormatter

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


class PulseJsonFormatter(JsonFormatter):
    """python-json-logger's ``JsonFormatter``, writing the same text, with its common case
    (no ``defaults``, static fields or dict message; JSON-native values) in fewer steps.

    A line (every "job accepted" line, one a job) took about 9 µs to format: the library
    builds the fields through renames looked up one by one, leaves the time a ``datetime``
    that its encoder turns into ``isoformat()`` text through a Python ``default`` hook, and
    builds a new encoder for each line. Here the renamed fields are worked out once, the
    time is written as that same text, and the line is written by ``json.dumps``' shared C
    encoder (the library's own separators and ``ensure_ascii``); a value that encoder
    refuses (an exception, a ``datetime``, ...) sends the line through the library's own
    encoder, as before. ``tests/test_logs.py`` holds the two to the same text.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each field of the format, and the name it is written under.
        self._renamed = [(name, self._get_rename(name)) for name in self._required_fields]
        timestamp = self.timestamp
        self._time_key = (
            self._get_rename(timestamp if isinstance(timestamp, str) else "timestamp") if timestamp else None
        )
        self._lean = (
            self.json_serializer is json.dumps
            and self.json_default is None
            and self.json_encoder is JsonEncoder
            and self.json_indent is None
            and self.json_ensure_ascii
            and not self.defaults
            and not self.static_fields
            and not self.rename_fields_keep_missing
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        if not self._lean or message_dict:
            super().add_fields(log_data, record, message_dict)
            return
        attributes = record.__dict__
        for name, written in self._renamed:
            log_data[written] = attributes.get(name)
        skip, rename = self._skip_fields, self.rename_fields
        for key, value in attributes.items():  # merge_record_extra, inline
            if key not in skip and not (hasattr(key, "startswith") and key.startswith("_")):
                log_data[rename.get(key, key)] = value
        if self._time_key is not None:  # the text JsonEncoder writes for the datetime
            log_data[self._time_key] = datetime.fromtimestamp(record.created, tz=UTC).isoformat()

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        if self._lean:
            try:
                return json.dumps(log_data)  # the shared C encoder: ", " / ": ", ASCII only
            except TypeError:  # a value only JsonEncoder's default knows: its turn
                pass
        return str(super().jsonify_log_record(log_data))


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time, level, logger, message, job ids and any extras."""
    return PulseJsonFormatter(
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
