"""gunicorn's own refusals as problem documents, like every other answer of the API.

gunicorn answers some requests before the app sees them (a request line or a
header over its limits, HTTP it cannot parse) with a short HTML page, written by
``gunicorn.util.write_error(sock, status, reason, message)``. ``install`` puts
``write_problem`` in its place (``pulse_api.gunicorn_conf`` calls it): same status,
same one-shot ``Connection: close`` answer, as ``application/problem+json``.
gunicorn has no hook for this answer, hence the replacement of that one function.
"""

from __future__ import annotations

import inspect
import json
import socket
from typing import Any

from gunicorn import util

from pulse_api.problems import HTTP_SLUGS, PROBLEM_BASE, PROBLEM_MEDIA_TYPE

#: Problem type slugs for the statuses gunicorn answers itself (the rest: HTTP_SLUGS).
SERVER_SLUGS = {414: "request-line-too-long", 431: "headers-too-large", 501: "not-implemented"}


def problem_bytes(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP/1.1 answer: status line, headers and the problem document."""
    doc: dict[str, Any] = {
        "type": PROBLEM_BASE + (SERVER_SLUGS.get(status) or HTTP_SLUGS.get(status) or f"http-{status}"),
        "title": reason,
        "status": status,
    }
    if message and status < 500:
        doc["detail"] = message[:500]
    body = json.dumps(doc).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM_MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error``."""
    util.write_nonblock(sock, problem_bytes(int(status_int), str(reason), str(mesg)))


def install() -> None:
    """Answer gunicorn's own refusals with problem documents (if its function is as expected)."""
    expected = ["sock", "status_int", "reason", "mesg"]
    if list(inspect.signature(util.write_error).parameters) == expected or util.write_error is write_problem:
        util.write_error = write_problem
