"""Turning what a handler did into what the job store records."""

from __future__ import annotations

import json
import traceback
from typing import Any

from pulse_core.errors import ResultNotSerializable, ResultTooLarge

_MESSAGE_MAX_CHARS = 2000
_TRACEBACK_FRAMES = 5
_TRACEBACK_MAX_CHARS = 4000


def encode_result(result: Any, max_bytes: int) -> str:
    """The result as compact JSON, refusing non-JSON data and results over ``max_bytes``."""
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultNotSerializable(f"the handler's result is not JSON: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ResultTooLarge(f"the handler's result is {size} bytes; the cap is {max_bytes}")
    return text


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The error as recorded on the job: type, message and a short traceback."""
    frames = traceback.format_exception(exc, limit=-_TRACEBACK_FRAMES)
    described: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc)[:_MESSAGE_MAX_CHARS],
        "traceback": "".join(frames)[-_TRACEBACK_MAX_CHARS:],
    }
    # An error may say more (an HTTP delivery's status and the start of its body).
    extra = getattr(exc, "error_fields", None)
    if isinstance(extra, dict):
        described.update({k: v for k, v in extra.items() if k not in described})
    return described
