"""Deliveries/s of one worker process to an HTTP handler that answers after 50 ms,
beside the same worker running a Python handler that sleeps 50 ms (``diag.sleep``).

One Celery worker, ``--pool threads --concurrency 64`` (as docs/http-handlers.md
says to run HTTP queues), consumes a queue pre-filled with jobs of one kind; the
clock runs until no message is waiting or unacknowledged. The receiver is a
threaded HTTP server on loopback in this process. The aim (issue 14): at least
200 deliveries/s, i.e. at least 10 in flight per process.
"""

from __future__ import annotations

import functools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.fernet import Fernet

from bench.common import BenchEnv, Result, celery_worker, spawn, stop, time_drain
from bench.drain import _cancel, _consume, _wait_worker, fill_pulse_queue, pulse_lane
from pulse_core.broker.celery_app import create_celery
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.http_handlers.registrations import Registration, Registrations
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore

JOBS = 1000
CONCURRENCY = 64
DELAY_SECONDS = 0.05
HTTP_TYPE = "bench.http"


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(DELAY_SECONDS)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def run(env: BenchEnv) -> list[Result]:
    key = Fernet.generate_key().decode()
    http_env = {"PULSE_SECRET_KEY": key, "PULSE_HTTP_HANDLER_ALLOW": "127.0.0.1/32,http"}
    settings = Settings(redis_url=env.redis_url, broker_url=env.redis_url)
    app = create_celery(settings)
    store = JobStore(env.redis)
    server = _Server(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    Registrations(env.redis, HttpHandlerSettings.from_env(http_env)).put(
        Registration(tenant_id="bench", job_type=HTTP_TYPE, url=url, timeout_seconds=30)
    )
    results = {
        "http": Result("http", f"1 worker (threads x{CONCURRENCY}), HTTP 50 ms"),
        "python": Result("http", f"1 worker (threads x{CONCURRENCY}), python sleep 50 ms"),
    }
    kinds = {"http": (HTTP_TYPE, {}), "python": ("diag.sleep", {"seconds": DELAY_SECONDS})}
    worker = "http@bench"
    command = celery_worker("pulse_worker.app", "idle-http", CONCURRENCY, "-n", worker)
    command[command.index("prefork")] = "threads"
    process = spawn(command, env.env(**http_env), env.work_dir / "http-worker.log")
    try:
        _wait_worker(app, worker)
        for round_no in range(env.rounds):
            for kind, (job_type, payload) in kinds.items():
                queue = f"bench-http-{kind}-{round_no}"
                fill_pulse_queue(store, app, queue, JOBS, job_type=job_type, payload=payload)
                consume, waiting = pulse_lane(app, queue)
                start = functools.partial(_consume, app, consume, worker)
                results[kind].values.append(time_drain(env.redis, waiting, start, JOBS, watched=True))
                _cancel(app, consume, worker)
    finally:
        stop(process)
        server.shutdown()
    return list(results.values())
