"""The job record: its states, its fields, and how it is stored in a Redis hash."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pulse_core import json_text
from pulse_core.ids import uuid4_hex, uuid4_text

#: Bumped when the stored record's shape changes incompatibly.
SCHEMA_VERSION = 1
#: ``options.priority``: 0-9, higher runs sooner (``pulse_core.broker.routing``).
DEFAULT_PRIORITY = 5
MAX_PRIORITY = 9


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
#: States from which a worker may claim the next attempt.
CLAIMABLE_STATES = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})

# Fields stored as JSON text inside the hash; the rest are plain strings.
_JSON_FIELDS = ("payload", "result", "error", "metadata")
#: The stored fields ``Job.document`` reads (``Job.from_redis`` of only these gives the same
#: document): a listing reads just these, never a record's payload.
DOCUMENT_FIELDS = (
    "jobId",
    "tenantId",
    "jobType",
    "queue",
    "state",
    "attempts",
    "traceId",
    "createdAt",
    "startedAt",
    "finishedAt",
    "result",
    "error",
    "metadata",
    "maxRetries",
    "timeoutSeconds",
    "priority",
    "dueAt",
    "cycle",
    "cancelRequested",
    "handlerVersion",
)


@dataclass(frozen=True, kw_only=True)
class Job:
    """One job, as the job store holds it."""

    job_id: str
    tenant_id: str
    job_type: str
    queue: str
    state: JobState = JobState.QUEUED
    attempts: int = 0
    payload: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    result: Any = None
    error: Mapping[str, Any] | None = None
    #: Effective retry budget and soft time limit, fixed when the job is accepted
    #: (``None``: the worker uses its jobType's policy).
    max_retries: int | None = None
    timeout_seconds: int | None = None
    #: When a scheduled or retrying job is due (epoch seconds), else ``None``.
    due_at: float | None = None
    #: Replays so far; each replay starts a fresh cycle of attempts under the same id.
    cycle: int = 0
    cancel_requested: bool = False
    #: 0-9, higher runs sooner among the jobs waiting on the same queue.
    priority: int = DEFAULT_PRIORITY
    #: When the job's current cycle was first due to run (epoch seconds): its start time
    #: when accepted (a delayed job's ``runAt``), or its replay. The queue wait counts from here.
    ready_at: float | None = None
    #: The HTTP handler registration version the job was last delivered with (HTTP jobTypes).
    handler_version: int | None = None

    def to_redis(self) -> dict[str, str]:
        """The record as the flat string mapping stored in a Redis hash."""
        flat = {
            "v": str(SCHEMA_VERSION),
            "jobId": self.job_id,
            "tenantId": self.tenant_id,
            "jobType": self.job_type,
            "queue": self.queue,
            "state": self.state.value,
            "attempts": str(self.attempts),
            "traceId": self.trace_id,
            "createdAt": self.created_at,
        }
        for key, value in (("startedAt", self.started_at), ("finishedAt", self.finished_at)):
            if value:
                flat[key] = value
        optional = {
            "maxRetries": self.max_retries,
            "timeoutSeconds": self.timeout_seconds,
            "dueAt": self.due_at,
            "readyAt": self.ready_at,
        }
        flat.update({key: str(value) for key, value in optional.items() if value is not None})
        if self.cycle:
            flat["cycle"] = str(self.cycle)
        if self.priority != DEFAULT_PRIORITY:
            flat["priority"] = str(self.priority)
        if self.cancel_requested:
            flat["cancelRequested"] = "1"
        if self.handler_version is not None:
            flat["handlerVersion"] = str(self.handler_version)
        for key in _JSON_FIELDS:
            value = getattr(self, key)
            if value is not None:
                flat[key] = json_text.compact(value)
        return flat

    @classmethod
    def from_redis(cls, raw: Mapping[str, str]) -> Job:
        """Rebuild a job from its stored hash."""

        def loads(key: str) -> Any:
            text = raw.get(key)
            return json.loads(text) if text else None

        return cls(
            job_id=raw["jobId"],
            tenant_id=raw["tenantId"],
            job_type=raw["jobType"],
            queue=raw.get("queue", ""),
            state=JobState(raw["state"]),
            attempts=int(raw.get("attempts", "0")),
            payload=loads("payload") or {},
            metadata=loads("metadata") or {},
            trace_id=raw.get("traceId", ""),
            created_at=raw.get("createdAt", ""),
            started_at=raw.get("startedAt") or None,
            finished_at=raw.get("finishedAt") or None,
            result=loads("result"),
            error=loads("error"),
            max_retries=_int_or_none(raw.get("maxRetries")),
            timeout_seconds=_int_or_none(raw.get("timeoutSeconds")),
            due_at=float(raw["dueAt"]) if raw.get("dueAt") else None,
            cycle=int(raw.get("cycle") or 0),
            cancel_requested=raw.get("cancelRequested") == "1",
            priority=int(raw.get("priority") or DEFAULT_PRIORITY),
            ready_at=float(raw["readyAt"]) if raw.get("readyAt") else None,
            handler_version=_int_or_none(raw.get("handlerVersion")),
        )

    def document(self) -> dict[str, Any]:
        """The public job document the API returns."""
        return {
            "jobId": self.job_id,
            "tenantId": self.tenant_id,
            "jobType": self.job_type,
            "state": self.state.value,
            "attempts": self.attempts,
            "queue": self.queue,
            "traceId": self.trace_id,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "result": self.result,
            "error": self.error,
            "metadata": dict(self.metadata),
            "options": {
                "maxRetries": self.max_retries,
                "timeoutSeconds": self.timeout_seconds,
                "priority": self.priority,
            },
            "runAt": _iso(self.due_at) if self.due_at is not None else None,
            "replays": self.cycle,
            "cancelRequested": self.cancel_requested,
            "handlerVersion": self.handler_version,
        }


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return uuid4_text()


def new_trace_id() -> str:
    """A fresh W3C-style 32-hex trace id."""
    return uuid4_hex()


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a ``Z`` suffix."""
    return _iso(time.time())
