"""Handlers the bench's workers load beside ``pulse_worker.diagnostics``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pulse_core.context import JobContext
from pulse_core.handlers import handler


@handler("bench.stamp")
def stamp(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, float]:
    """The moment the handler started (epoch seconds, to the microsecond): the job record's
    ``startedAt`` is to the millisecond, too coarse for latencies of a few milliseconds."""
    return {"startedAt": time.time()}
