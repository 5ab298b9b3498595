"""What the OpenAPI document says about refusals: one place for problem responses.

Every refusal is ``application/problem+json``; these helpers document each status
an endpoint can return with that schema and the headers that come with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask_smorest import Blueprint

from pulse_api.problems import PROBLEM_MEDIA_TYPE
from pulse_api.schemas import ProblemSchema

F = TypeVar("F", bound=Callable[..., Any])


def _header(description: str, kind: str = "integer") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": _header("Submissions allowed in the tenant's tightest window"),
    "RateLimit-Remaining": _header("Submissions left in that window"),
    "RateLimit-Reset": _header("Seconds until that window frees a slot"),
}
RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying")}

DESCRIPTIONS = {
    400: "Malformed request (the body is not JSON)",
    401: "Missing or invalid API key",
    404: "No such job (or dead letter) for this tenant",
    409: "The job has already finished",
    413: "The body is larger than the tenant's max_payload_bytes (or the batch cap)",
    415: "The body is not application/json",
    422: "Invalid request, named per field (unknown jobType, idempotency key reused "
    "with another body, bad cursor, ...)",
    429: "Rate limit reached (problem type rate-limited) or too many jobs not yet final (problem type backlog-full)",
    503: "Redis or the broker is unavailable; nothing was enqueued",
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("Bearer challenge", "string")},
    429: {**RETRY_AFTER, **RATE_LIMIT_HEADERS},
    503: RETRY_AFTER,
}


def problems(blp: Blueprint, *statuses: int, submit: bool = False) -> Callable[[F], F]:
    """Document ``statuses`` as problem responses; ``submit`` adds the RateLimit headers."""

    def decorate(view: F) -> F:
        for status in statuses:
            headers = dict(HEADERS.get(status, {}))
            if submit and status not in (400, 401, 503):
                headers = {**RATE_LIMIT_HEADERS, **headers}
            view = blp.alt_response(
                status,
                schema=ProblemSchema,
                content_type=PROBLEM_MEDIA_TYPE,
                description=DESCRIPTIONS[status],
                headers=headers or None,
            )(view)
        return view

    return decorate
