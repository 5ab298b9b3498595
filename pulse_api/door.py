"""The door every ``/v1`` request passes: who is asking, in what format, how big.

Runs before the body is read: 401 for a missing or unknown key, 415 for a
non-empty POST or PUT body that is not ``application/json``, 413 for a body larger than the
endpoint's cap (``Content-Length`` checked up front; a chunked body is read
no further than one byte past the cap).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import request

from pulse_api.auth import authenticate_request, current_tenant
from pulse_core.errors import PayloadTooLarge, UnsupportedMediaType
from pulse_core.tenants import Tenant


def guard(max_body_bytes: Callable[[Tenant], int]) -> None:
    """Authenticate, then hold a body (POST or PUT) to JSON of at most ``max_body_bytes(tenant)`` bytes."""
    authenticate_request()
    hold_body(lambda: max_body_bytes(current_tenant()))


def hold_body(cap_bytes: Callable[[], int]) -> None:
    """Hold a POST or PUT body to JSON of at most ``cap_bytes()`` bytes (415, 413): a body of
    another media type is never read as if it were absent (PUT ``text/plain`` holding JSON
    was answered "url: missing")."""
    if request.method not in ("POST", "PUT") or not _has_body():
        return  # e.g. POST /v1/jobs/<id>/cancel; a body-taking endpoint's schema refuses it
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(f"Content-Type is {request.mimetype or 'missing'}; send application/json")
    cap = cap_bytes()
    if request.content_length is not None:
        if request.content_length > cap:
            raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {cap}")
        return
    # A chunked body has no length up front: read (and cache, for the parser) at most
    # one byte past the cap; werkzeug's limited stream stops there without raising.
    request.max_content_length = cap + 1
    if len(request.get_data(cache=True)) > cap:
        raise PayloadTooLarge(f"the body is larger than the limit of {cap} bytes")


def _has_body() -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
