"""What the OpenAPI document says about refusals: one place for problem responses.

Every refusal is ``application/problem+json``; these helpers document each status
an endpoint can return with that schema and the headers that come with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from apispec import BasePlugin
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter

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
    403: "tenantId names another tenant than the API key's own",
    404: "No such job (or dead letter) for this tenant",
    409: "The job has already finished",
    413: "The body is larger than the tenant's max_payload_bytes (or the batch cap)",
    415: "The body is not application/json",
    422: "Invalid request, named per field (unknown jobType, idempotency key reused "
    "with another body, bad cursor, ...)",
    429: "Rate limit reached (problem type rate-limited), too many jobs not yet final (problem type "
    "backlog-full) or the tenant's storage budget full (problem type storage-budget-full)",
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


#: Every operation's ``operationId``: stable names a generated client turns into its
#: method names. An operation missing here stops the app from building.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("POST", "/v1/jobs"): "submitJob",
    ("GET", "/v1/jobs"): "listJobs",
    ("GET", "/v1/jobs/{job_id}"): "getJob",
    ("POST", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("POST", "/v1/batches"): "submitBatch",
    ("GET", "/v1/dead-letters"): "listDeadLetters",
    ("POST", "/v1/dead-letters/replay"): "replayDeadLetters",
    ("GET", "/v1/dead-letters/{job_id}"): "getDeadLetter",
    ("DELETE", "/v1/dead-letters/{job_id}"): "deleteDeadLetter",
    ("POST", "/v1/dead-letters/{job_id}/replay"): "replayDeadLetter",
    ("GET", "/v1/handlers"): "listHttpHandlers",
    ("PUT", "/v1/handlers/{job_type}"): "putHttpHandler",
    ("GET", "/v1/handlers/{job_type}"): "getHttpHandler",
    ("DELETE", "/v1/handlers/{job_type}"): "deleteHttpHandler",
    ("POST", "/v1/handlers/{job_type}/rotate-secret"): "rotateHttpHandlerSecret",
    ("POST", "/v1/jobs/{job_id}/heartbeat"): "heartbeatJob",
    ("POST", "/v1/jobs/{job_id}/complete"): "completeJob",
    ("GET", "/healthz"): "getHealth",
    ("GET", "/readyz"): "getReadiness",
}


def _link(operation_id: str, job_id: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": {"job_id": job_id}}


_NEW_JOB = "$response.body#/jobId"
#: The first job of a page (jobs and dead letters alike).
_FIRST_DEAD = "$response.body#/items/0/jobId"
#: OpenAPI links (operation, status) -> name -> link: what a client (or a stateful
#: fuzzer) can do next with an answer: submit -> read -> cancel; dead letter -> replay.
LINKS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("POST", "/v1/jobs", "202"): {
        "GetJob": _link("getJob", _NEW_JOB),
        "CancelJob": _link("cancelJob", _NEW_JOB),
    },
    ("POST", "/v1/jobs", "200"): {
        "GetJob": _link("getJob", _NEW_JOB),
        "CancelJob": _link("cancelJob", _NEW_JOB),
    },
    ("GET", "/v1/jobs", "200"): {"GetJob": _link("getJob", _FIRST_DEAD), "CancelJob": _link("cancelJob", _FIRST_DEAD)},
    ("GET", "/v1/jobs/{job_id}", "200"): {"CancelJob": _link("cancelJob", _NEW_JOB)},
    ("POST", "/v1/jobs/{job_id}/cancel", "200"): {"GetJob": _link("getJob", _NEW_JOB)},
    ("GET", "/v1/dead-letters", "200"): {
        "GetDeadLetter": _link("getDeadLetter", _FIRST_DEAD),
        "ReplayDeadLetter": _link("replayDeadLetter", _FIRST_DEAD),
        "DeleteDeadLetter": _link("deleteDeadLetter", _FIRST_DEAD),
    },
    ("GET", "/v1/dead-letters/{job_id}", "200"): {"ReplayDeadLetter": _link("replayDeadLetter", _NEW_JOB)},
    ("POST", "/v1/dead-letters/{job_id}/replay", "202"): {"GetJob": _link("getJob", _NEW_JOB)},
}


class DeadLetterIdConverter(BaseConverter):
    """A dead letter's job id in a path: any segment but ``replay``, which names the bulk
    replay (so ``/v1/dead-letters/replay`` is that resource alone, and its ``Allow`` says so)."""

    regex = r"(?!replay$)[^/]+"

    @staticmethod
    def parameter_schema(converter: BaseConverter) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^(?!replay$)[^/]+$"}


class StableOperations(BasePlugin):
    """apispec plugin: each operation gets its ``operationId`` and its links; a schema
    class's ``OPENAPI_EXTRA`` (rules marshmallow checks in code) joins its component."""

    def schema_helper(self, name: str, definition: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        extra = getattr(kwargs.get("schema"), "OPENAPI_EXTRA", None)
        return dict(extra) if extra else None

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        for method, operation in (operations or {}).items():
            key = (method.upper(), str(path))
            if key not in OPERATION_IDS:
                raise KeyError(f"{key[0]} {key[1]} has no operationId in pulse_api.openapi.OPERATION_IDS")
            operation["operationId"] = OPERATION_IDS[key]
            for status, response in operation.get("responses", {}).items():
                links = LINKS.get((*key, str(status)))
                if links and isinstance(response, dict):
                    response["links"] = links
