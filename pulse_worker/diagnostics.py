"""Diagnostic handlers, for trying Pulse out and for its tests.

Loaded by ``pulse dev`` and by the tests; elsewhere only when named in
``PULSE_HANDLER_MODULES``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pulse_core.context import JobContext
from pulse_core.errors import PermanentError, RetryableError
from pulse_core.handlers import handler


@handler("diag.echo")
def echo(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Return the payload unchanged (in a span of its own when tracing is on)."""
    with ctx.span("diag.echo.copy", keys=len(payload)):
        return dict(payload)


# Diagnostics retry quickly (sub-second backoff) so that trying retries out is quick.
@handler("diag.sleep", backoff=0.2, backoff_max=1)
def sleep(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleep ``payload["seconds"]`` seconds."""
    seconds = _number(payload, "seconds")
    time.sleep(seconds)
    return {"slept": seconds}


@handler("diag.flaky", max_retries=3, backoff=0.5, backoff_max=2)
def flaky(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Fail with a retryable error on the first ``failTimes`` attempts, then succeed."""
    fail_times = int(_number(payload, "failTimes"))
    if ctx.attempt <= fail_times:
        raise RetryableError(f"diag.flaky failing attempt {ctx.attempt} of {fail_times}")
    return {"attempts": ctx.attempt}


@handler("diag.fail", max_retries=3, backoff=0.2, backoff_max=1)
def fail(payload: Mapping[str, Any], ctx: JobContext) -> None:
    """Always fail (retryably, so retries run until they are exhausted)."""
    raise RetryableError(f"diag.fail always fails (attempt {ctx.attempt})")


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PermanentError(f"payload.{name} must be a non-negative number, got {value!r}")
    return float(value)
