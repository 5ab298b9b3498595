"""A real HTTP receiver on loopback for the HTTP handler tests (no mock of httpx).

Each path is a behaviour; every request is recorded (headers, body, when, which
connection) so a test can check what a worker really sent.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ReceiverState:
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    #: Bytes of a big body written before the client hung up.
    big_bytes_sent: int = 0
    hold_started: threading.Event = field(default_factory=threading.Event)
    hold_release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]


BIG_BODY_BYTES = 50 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        with state.lock:
            state.requests.append(received)
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            self._behave(received)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self._write(status, body, headers)
        except OSError:  # the worker hung up (a time-out): what a real receiver sees too
            self.close_connection = True

    def _write(self, status: int, body: bytes, headers: dict[str, str] | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _behave(self, received: Received) -> None:
        path = received.path.split("?")[0]
        state = self.server.state
        if path == "/ok":
            self._send(200, json.dumps({"echo": received.json()["payload"]}).encode())
        elif path == "/slow":
            time.sleep(float(received.json()["payload"].get("seconds", 0.05)))
            self._send(200, b'{"ok":true}')
        elif path == "/accept":
            self._send(202, b'{"accepted":true}')
        elif path == "/accept-once":  # a long job's first attempt (never reported), then slow 200s
            if received.json()["attempt"] == 1:
                self._send(202, b'{"accepted":true}')
            else:
                time.sleep(0.2)
                self._send(200, b'{"ok":true}')
        elif path == "/empty":
            self._send(204, b"")
        elif path == "/hang":
            time.sleep(5)
            self._send(200, b"{}")
        elif path == "/reset":
            # Close with RST: the client sees a connection reset, no response.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif path == "/500":
            self._send(500, b"E" * 5000)
        elif path == "/404":
            self._send(404, b'{"error":"no such thing"}')
        elif path == "/429":
            if len(state.to("/429")) == 1:
                self._send(429, b"slow down", {"Retry-After": "2"})
            else:
                self._send(200, b'{"second":true}')
        elif path == "/redirect":
            self._send(302, b"", {"Location": "http://127.0.0.1:1/elsewhere"})
        elif path in ("/big", "/big500"):
            status = 200 if path == "/big" else 500
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(BIG_BODY_BYTES))
            self.end_headers()
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < BIG_BODY_BYTES:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            finally:
                with state.lock:
                    state.big_bytes_sent = max(state.big_bytes_sent, sent)
                self.close_connection = True
        elif path == "/hold":
            # The first delivery is held until the test releases it; later ones succeed.
            if len(state.to("/hold")) == 1:
                state.hold_started.set()
                state.hold_release.wait(60)
                self.close_connection = True
                return
            self._send(200, b'{"held":false}')
        else:
            self._send(404, b"unknown test path")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ReceiverState

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:
            self.state.connections += 1
        super().process_request(request, client_address)


class Receiver:
    """``with Receiver("127.0.0.1") as r:`` serves on a free port until the block ends."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.state = ReceiverState()
        self._server = _Server((host, 0), _Handler)
        self._server.state = self.state
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.hold_release.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"
