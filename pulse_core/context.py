"""What a handler is told about the job it runs."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from pulse_core.telemetry import tracing


def _never() -> bool:
    return False


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """The handler's view of its job; handlers never see Celery.

    ``cancel_requested()`` asks the job store whether ``POST /v1/jobs/<id>/cancel``
    was called while this attempt runs; a handler that wants to stop raises
    ``pulse_core.errors.JobCancelled`` and the job ends ``cancelled``.
    """

    job_id: str
    tenant_id: str
    job_type: str
    attempt: int
    trace_id: str
    max_retries: int = 0
    cancel_requested: Callable[[], bool] = _never

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A child span of the job's span, for a step of the handler's own.

        ``with ctx.span("fetch", url=url): ...``; costs next to nothing when
        tracing is off. Never put payload contents in ``attributes``.
        """
        return tracing.handler_span(name, attributes)
