"""Shared by the Redis fault tests: a private Redis of a test module's own, a TCP proxy that
breaks the link to it for real, and the invariants every fault test checks afterwards."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_api.services import EXTENSION_KEY
from pulse_core import keys
from pulse_core.jobs import FINAL_STATES
from pulse_core.settings import Settings
from tests.invariants import backlog_mismatches, unowned_keys
from tests.support import auth, wait_for, witness_starts

FINAL = {state.value for state in FINAL_STATES}


def private_settings(redis_url: str, tenants_file: Path, **overrides: Any) -> Settings:
    """Settings for a private Redis: short leases and sweeps, as the session's settings."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "broker_url": redis_url,
        "tenants_file": tenants_file,
        "handler_modules": ("pulse_worker.diagnostics", "witness_handlers"),
        "lease_seconds": 2.0,
        "sweep_interval_seconds": 0.5,
        "unknown_job_type_grace_seconds": 3.0,
        **overrides,
    }
    return Settings(**values)


def api_through(settings: Settings, proxy: RedisProxy, *, socket_timeout: float) -> Flask:
    """The API, reaching Redis (its job store and broker) only through ``proxy``; a call not
    answered within ``socket_timeout`` seconds is given up (and retried once, by redis-py)."""
    app = create_app(replace(settings, redis_url=proxy.url, broker_url=proxy.url))
    pool = app.extensions[EXTENSION_KEY].redis.connection_pool
    pool.connection_kwargs["socket_timeout"] = socket_timeout
    pool.disconnect()  # connections made from now on wait as long as set above
    return app


def submit(client: FlaskClient, job_type: str, payload: dict[str, Any], tenant: str = "acme") -> str:
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload}, headers=auth(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["jobId"])


def assert_invariants(redis: Redis, client: FlaskClient, accepted: Iterable[str], *, timeout: float = 60.0) -> None:
    """After a fault: every job answered 2xx reaches a final state; no attempt's handler
    started twice (the witness handlers' record); each tenant's backlog count ``pending``
    equals its records that are not final; no ``pulse:`` key is left without an owner or
    an expiry (tests/invariants.py)."""
    accepted = list(accepted)

    def not_final() -> dict[str, dict[str, str]]:
        """The jobs not final yet, each with its whole record (empty: the record is gone)."""
        return {
            job_id: redis.hgetall(keys.job(job_id))
            for job_id in accepted
            if redis.hget(keys.job(job_id), "state") not in FINAL
        }

    try:
        wait_for(lambda: not not_final(), timeout=timeout, interval=0.2)
    except AssertionError:
        late = not_final()
        raise AssertionError(f"{len(late)} of {len(accepted)} jobs not final within {timeout} s: {late}") from None
    for job_id in accepted:
        starts = Counter(entry["attempt"] for entry in witness_starts(redis, job_id))
        assert all(n == 1 for n in starts.values()), (job_id, witness_starts(redis, job_id))
    assert backlog_mismatches(redis) == {}
    assert unowned_keys(redis) == []


#: What the proxy does to one command: "request" drops it (it never reaches Redis, so it
#: never runs); "reply" forwards it and drops Redis' answer (it runs, the answer is lost).
Loss = Literal["request", "reply"]


class _Link:
    """One client connection through the proxy; once cut, nothing more crosses that way."""

    def __init__(self) -> None:
        self.requests_cut = False
        self.replies_cut = False


class RedisProxy:
    """A TCP proxy on loopback to the Redis on port ``target``, for faults of the link itself.

    - ``stall()`` stops forwarding both ways, connections left open (a network partition);
      ``resume()`` lets everything through again.
    - ``forwarded(text)``: how many times ``text`` (a script's SHA, say) went to Redis.
    - ``lose(command, losses)``: the next ``len(losses)`` times a client sends ``command``,
      its request or its reply is lost as each says (``Loss``), and that connection goes
      silent from then on, as a broken link does: the client times out, reconnects and
      (redis-py) retries on a new connection, which the next loss applies to.
    - ``delay(command, seconds)``: the next time a client sends ``command``, its request
      reaches Redis ``seconds`` late (a slow link one way, or a Redis busy with something
      else meanwhile); its reply comes back at once. ``alone=True``: what the client sent
      before ``command`` in the same write (the commands ahead of it in a pipeline) goes at
      once, and only ``command`` and what follows is late: a pipeline cut between two commands.

    Written by hand: no well-kept library injects faults per command on a live TCP link
    (toxiproxy needs a server of its own and cuts by bytes and time, not by command).
    """

    def __init__(self, target: int) -> None:
        self._target = target
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._losses: deque[tuple[bytes, Loss]] = deque()
        self._delays: deque[tuple[bytes, float, bool]] = deque()
        self._sent: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self._flowing.clear()

    def reset(self) -> None:
        """Break every open link (both ends see it closed, what was in flight is lost); new
        connections are still accepted and forwarded. Works for any TCP protocol (RabbitMQ's too)."""
        with self._lock:
            open_now, self._sockets = self._sockets, []
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the forwarding threads' reads
            with contextlib.suppress(OSError):
                sock.close()

    def resume(self) -> None:
        self._flowing.set()

    def lose(self, command: str, losses: Iterable[Loss]) -> None:
        with self._lock:
            self._losses.extend((command.upper().encode(), loss) for loss in losses)

    def delay(self, command: str, seconds: float, *, alone: bool = False) -> None:
        with self._lock:
            self._delays.append((command.upper().encode(), seconds, alone))

    def forwarded(self, text: str) -> int:
        with self._lock:
            return sum(chunk.count(text.encode()) for chunk in self._sent)

    def delays_left(self) -> int:
        with self._lock:
            return len(self._delays)

    def losses_left(self) -> int:
        with self._lock:
            return len(self._losses)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, upstream]
            link = _Link()
            threading.Thread(target=self._requests, args=(client, upstream, link), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, link), daemon=True).start()

    def _next_loss(self, data: bytes) -> Loss | None:
        """The loss armed for the command ``data`` starts (RESP: ``$<len>\r\nNAME\r\n``), if any."""
        with self._lock:
            if self._losses and f"\r\n{self._losses[0][0].decode()}\r\n".encode() in data.upper():
                return self._losses.popleft()[1]
        return None

    def _pieces(self, data: bytes) -> list[tuple[bytes, float]]:
        """``data`` as (bytes, how late they are to reach Redis), in order: cut where a command
        an ``alone`` delay is armed for starts (RESP: the ``*<n>`` line before its name); a
        plain delay makes the whole of ``data`` late, as one slow write."""
        pieces: list[tuple[bytes, float]] = []
        upper, cut, search, late = data.upper(), 0, 0, 0.0
        while True:
            with self._lock:
                if not self._delays:
                    break
                command, seconds, alone = self._delays[0]
                marker = b"\r\n" + command + b"\r\n"
                at = upper.find(marker, search)
                if at < 0:
                    break
                self._delays.popleft()
            if not alone:
                return [(data, seconds)]
            start = upper.rfind(b"\r\n*", cut, at)
            start = cut if start < 0 else start + 2
            pieces.append((data[cut:start], late))
            cut, search, late = start, at + len(marker), seconds
        pieces.append((data[cut:], late))
        return pieces

    def _requests(self, src: socket.socket, dst: socket.socket, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while received := src.recv(65536):
                for data, late in self._pieces(received):
                    if late:
                        time.sleep(late)
                    if not data:
                        continue
                    if not link.requests_cut:
                        loss = self._next_loss(data)
                        link.requests_cut = loss == "request"
                        link.replies_cut = loss is not None
                    if not link.requests_cut:
                        with self._lock:
                            self._sent.append(data)
                    if not self._pass(dst, data, link.requests_cut):
                        return
        self._hang_up(src, dst)

    def _replies(self, src: socket.socket, dst: socket.socket, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self._pass(dst, data, link.replies_cut):
                    return
        self._hang_up(src, dst)

    def _pass(self, dst: socket.socket, data: bytes, cut: bool) -> bool:
        self._flowing.wait()
        if self._closed.is_set():
            return False
        if not cut:
            dst.sendall(data)
        return True

    @staticmethod
    def _hang_up(*ends: socket.socket) -> None:
        """One side closed: close the other, as a proxy does (the client sees the close)."""
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
