"""Every refusal as an RFC 9457 problem document, mapped in this one place.

``PulseError`` classes map to a status and a problem type; HTTP errors raised by
Flask or flask-smorest (400 bad JSON, 422 schema violations, 404, 405, ...) are
rewritten into the same shape. No stack trace ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Response, g, json
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from pulse_core.errors import (
    AttemptOver,
    AuthenticationFailed,
    BacklogFull,
    BatchTooLarge,
    BrokerUnavailable,
    HandlerNotFound,
    IdempotencyConflict,
    InvalidIdempotencyKey,
    InvalidParameter,
    JobNotCancellable,
    JobNotFound,
    JobTypeTaken,
    PayloadTooLarge,
    PulseError,
    RateLimited,
    Refused,
    SecretKeyMissing,
    StorageBudgetFull,
    TenantMismatch,
    UnknownJobType,
    UnsupportedMediaType,
)
from pulse_core.guards.rate_limits import LimitReached
from pulse_core.redis_client import refuses_for_now

log = logging.getLogger("pulse.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"

#: PulseError class -> (HTTP status, problem type slug, title).
PROBLEMS: dict[type[PulseError], tuple[int, str, str]] = {
    AuthenticationFailed: (401, "unauthorized", "Missing or invalid API key"),
    JobNotFound: (404, "not-found", "No such job"),
    HandlerNotFound: (404, "not-found", "No such HTTP handler"),
    AttemptOver: (409, "attempt-over", "The attempt is over"),
    JobTypeTaken: (409, "job-type-taken", "A Python handler already serves this jobType"),
    SecretKeyMissing: (503, "secret-key-missing", "The operator has not set PULSE_SECRET_KEY"),
    PayloadTooLarge: (413, "payload-too-large", "The body is larger than allowed"),
    UnsupportedMediaType: (415, "unsupported-media-type", "The body must be application/json"),
    JobNotCancellable: (409, "job-finished", "The job has already finished"),
    UnknownJobType: (422, "unknown-job-type", "Unknown jobType"),
    InvalidParameter: (422, "validation-error", "A value is out of range"),
    TenantMismatch: (403, "tenant-mismatch", "tenantId is not the API key's tenant"),
    IdempotencyConflict: (
        422,
        "idempotency-key-reused",
        "The idempotency key was already used with a different job body",
    ),
    InvalidIdempotencyKey: (422, "invalid-idempotency-key", "Invalid idempotency key"),
    BatchTooLarge: (422, "batch-too-large", "Too many jobs in one batch"),
    RateLimited: (429, "rate-limited", "Too many submissions; retry after Retry-After seconds"),
    BacklogFull: (429, "backlog-full", "Too many jobs not yet finished; retry later"),
    # 429, not 507: the budget is the tenant's own quota (the tenants file's max_stored_bytes),
    # not the server failing; every refusal is a 4xx, and 5xx stays for Redis itself refusing.
    StorageBudgetFull: (429, "storage-budget-full", "The tenant's storage budget is full; retry later"),
    BrokerUnavailable: (503, "unavailable", "The job could not be queued; nothing was enqueued"),
}

#: Problem type slugs for plain HTTP errors.
HTTP_SLUGS = {
    400: "malformed-request",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    500: "internal-error",
    503: "unavailable",
}


def problem(
    status: int,
    slug: str,
    title: str,
    *,
    detail: str | None = None,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A ``application/problem+json`` response."""
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = dict(errors)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problem_for(error: PulseError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, problem document and headers for a deliberate Pulse error."""
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            status, slug, title = PROBLEMS[cls]
            break
    else:
        log.error("unmapped PulseError %r", error)
        status, slug, title = 500, "internal-error", "Internal error"
        return status, {"type": PROBLEM_BASE + slug, "title": title, "status": status}, {}
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    body["detail"] = str(error)
    if error.field:
        body["errors"] = {error.field: [str(error)]}
    headers: dict[str, str] = {}
    if isinstance(error, Refused):
        headers["Retry-After"] = str(error.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pulse"'
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return status, body, headers


def from_pulse_error(error: PulseError) -> Response:
    """The problem response for a deliberate Pulse error (its refusal reason noted for metrics)."""
    g.refusal_reason = error.reason
    if isinstance(error, LimitReached):  # its RateLimit-* headers: pulse_api.jobs.add_rate_limit_headers
        g.refusal_limit = error.limit
    status, body, headers = problem_for(error)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(headers)
    return response


def validation_problem(messages: Any) -> tuple[int, dict[str, Any]]:
    """Status and problem document for marshmallow messages (one batch item)."""
    errors, detail = _flatten({"json": messages})
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + HTTP_SLUGS[422],
        "title": "Unprocessable Entity",
        "status": 422,
    }
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    return 422, body


def from_http_exception(error: HTTPException) -> Response:
    """The problem response for an HTTP error raised by Flask, webargs or flask-smorest."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    errors, detail = _flatten(data.get("messages"))
    if status >= 500:
        detail = None
    headers = dict(data.get("headers") or {})
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        # RFC 9110 section 15.5.6: a 405 names the methods the resource does allow.
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return problem(
        status,
        HTTP_SLUGS.get(status, f"http-{status}"),
        error.name,
        detail=detail or (error.description if status < 500 else None),
        errors=errors,
        headers=headers,
    )


def from_unexpected(error: Exception) -> Response:
    """A 503 when a backing service is down or refuses work for now (Redis out of memory,
    read-only in a failover, loading); a bare 500 for anything else. Never a trace."""
    if isinstance(error, RedisConnectionError | RedisTimeoutError | KombuOperationalError) or refuses_for_now(error):
        # Down, restarting, failing over or out of memory: a client may try again.
        log.warning("backing service unavailable: %s", error)
        return problem(503, "unavailable", "A backing service is unavailable", headers={"Retry-After": "1"})
    log.exception("unhandled error", exc_info=error)
    return problem(500, "internal-error", "Internal error")


def _flatten(messages: Any) -> tuple[dict[str, list[str]], str | None]:
    """webargs messages ``{"json": {"a": {"b": ["..."]}}}`` -> ``{"a.b": ["..."]}``."""
    errors: dict[str, list[str]] = {}
    loose: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list | tuple):
            for item in node:
                if isinstance(item, Mapping | list | tuple):
                    walk(item, path)
                elif path:
                    errors.setdefault(path, []).append(str(item))
                else:
                    loose.append(str(item))
        elif node is not None:
            (errors.setdefault(path, []) if path else loose).append(str(node))

    if isinstance(messages, Mapping):
        for location in messages.values():  # "json", "query", "headers", ...
            walk(location, "")
    return errors, " ".join(loose) or None
