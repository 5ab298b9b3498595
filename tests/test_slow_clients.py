"""Slow clients cannot stop the API: 500 connections sending their headers slowly
(no key needed) and submits are still answered, by ``pulse api`` as it runs."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import TENANT_KEYS, ApiProcess, post_job_over_http, settings_env

SLOW_CLIENTS = 500
#: Each submit must be answered within this, with the slow clients connected.
ANSWER_WITHIN_SECONDS = 10.0


@pytest.fixture
def api(settings: Settings, redis: Redis, tmp_path: Path) -> Iterator[ApiProcess]:
    announce(redis, ["diag.echo"], 600)
    process = ApiProcess(settings_env(replace(settings, default_queue="t-slow-clients")), tmp_path / "api.log")
    yield process.start()
    process.stop()
    redis.delete("t-slow-clients")


def _submit(api: ApiProcess) -> tuple[int, float]:
    started = time.monotonic()
    status = post_job_over_http(api.port, timeout=ANSWER_WITHIN_SECONDS)
    return status, time.monotonic() - started


@pytest.mark.timeout(180)
def test_submits_are_answered_while_500_clients_send_headers_slowly(api: ApiProcess) -> None:
    # given 500 connections that sent half a request and then nothing more
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: pulse\r\nContent-Type: appl")
            slow.append(sock)
        time.sleep(1)
        # when a client submits jobs, then each is accepted within the bound
        answers = [_submit(api) for _ in range(5)]
        assert [status for status, _ in answers] == [202] * 5, answers
        assert max(seconds for _, seconds in answers) < ANSWER_WITHIN_SECONDS, answers
        # and one slow client finishing its request is answered too
        slow[0].sendall(b"ication/json\r\nContent-Length: 2\r\n\r\n{}")
        assert slow[0].recv(64).startswith(b"HTTP/1.1 401")
    finally:
        for sock in slow:
            sock.close()


def test_requests_gunicorn_refuses_itself_are_problem_documents(api: ApiProcess) -> None:
    # given requests the HTTP server refuses before Pulse's app sees them
    def raw(request: bytes) -> tuple[int, str, dict[str, object]]:
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers["Content-Type"], json.loads(body)

    many = b"".join(b"X-H%d: 1\r\n" % n for n in range(120))
    cases = [
        # a request line over 4094 bytes, a header over 8190 bytes, more than 100 headers, not HTTP
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ]
    for request, status in cases:
        # then each is a problem document with the status gunicorn chose
        got, media_type, problem = raw(request)
        assert (got, media_type) == (status, "application/problem+json"), (got, media_type, problem)
        assert problem["status"] == status and str(problem["type"]).startswith("/problems/")


@pytest.mark.timeout(120)
def test_a_client_reusing_its_connection_sends_every_submit_on_it(api: ApiProcess) -> None:
    # given one HTTP/1.1 connection to `pulse api`
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=ANSWER_WITHIN_SECONDS)
    sockets, statuses, closing = set(), [], []
    try:
        # when it sends 50 submits one after another
        for _ in range(50):
            conn.request(
                "POST",
                "/v1/jobs",
                body=json.dumps({"jobType": "diag.echo", "payload": {}}),
                headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}", "Content-Type": "application/json"},
            )
            assert conn.sock is not None
            sockets.add(conn.sock.getsockname())
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            closing.append((response.getheader("Connection") or "").lower() == "close")
    finally:
        conn.close()
    # then every submit was answered on the one connection, kept alive throughout
    assert statuses == [202] * 50
    assert len(sockets) == 1
    assert not any(closing)
