"""What a handler is told about the job it runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """The handler's view of its job; handlers never see Celery."""

    job_id: str
    tenant_id: str
    job_type: str
    attempt: int
    trace_id: str
