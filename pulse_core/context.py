"""What a handler is told about the job it runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any


def _never() -> bool:
    return False


def _no_span(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Any]:
    return nullcontext()


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
    #: Opens a child span of the job's span; the worker passes its tracer's.
    span_factory: Callable[[str, Mapping[str, Any]], AbstractContextManager[Any]] = _no_span

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A child span of the job's span, for a step of the handler's own.

        ``with ctx.span("fetch", url=url): ...``; costs next to nothing when
        tracing is off. Never put payload contents in ``attributes``.
        """
        return self.span_factory(name, attributes)
