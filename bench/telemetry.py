"""The cost of telemetry: submit and drain jobs/s with tracing and metrics on, then off.

"On" is what an operator runs: the OTLP/HTTP span exporter (batching) sending to
a local sink in this process that accepts and discards every export, and
Prometheus metrics in multiprocess mode (files under PROMETHEUS_MULTIPROC_DIR),
with the worker's metrics endpoint up. "On, 10% sampled" adds
``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with ratio 0.1 (the lever an
operator has). "Off" is no OTEL variables and ``PULSE_METRICS=off``. JSON logs
are the same in all. The API servers (and the workers) of each mode run side by
side and take turns, round by round.
"""

from __future__ import annotations

import functools
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import (
    BenchEnv,
    Result,
    celery_worker,
    http_load,
    json_body,
    spawn,
    stop,
    time_drain,
    wait_http,
)
from bench.drain import _cancel, _consume, _wait_worker, fill_pulse_queue, pulse_lane
from pulse_cli.embedded_redis import free_port
from pulse_core.broker.celery_app import create_celery
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce

REQUESTS = 2000
CLIENTS = 8
GUNICORN_WORKERS = 2
JOBS = 2000
CONCURRENCY = 2
PAYLOAD = {"n": 1, "text": "hello"}


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _modes(env: BenchEnv, sink_port: int, metrics_port: int) -> dict[str, dict[str, str]]:
    on_dir = env.work_dir / "metrics-on"
    on_dir.mkdir(exist_ok=True)
    on = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_SERVICE_NAME": "pulse-bench",
        "PROMETHEUS_MULTIPROC_DIR": str(on_dir),
        "PULSE_WORKER_METRICS_PORT": str(metrics_port),
    }
    sampled = {
        **on,
        "PROMETHEUS_MULTIPROC_DIR": str(env.work_dir / "metrics-sampled"),
        "PULSE_WORKER_METRICS_PORT": str(free_port()),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    (env.work_dir / "metrics-sampled").mkdir(exist_ok=True)
    return {
        "on": env.env(**on),
        "on, 10% sampled": env.env(**sampled),
        "off": env.env(PULSE_METRICS="off"),
    }


def run(env: BenchEnv) -> list[Result]:
    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    modes = _modes(env, sink.server_address[1], free_port())
    try:
        results = _submit(env, modes) + _drain(env, modes)
    finally:
        sink.shutdown()
    print(f"   OTLP sink took {_Sink.exports} exports", flush=True)
    return results


def _api_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:pulse_api.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(GUNICORN_WORKERS),
        "pulse_api.wsgi:app",
    ]


def _submit(env: BenchEnv, modes: dict[str, dict[str, str]]) -> list[Result]:
    results = {mode: Result("telemetry", f"submit, telemetry {mode}") for mode in modes}
    announce(env.redis, ["diag.echo"], 3600)
    ports = {mode: free_port() for mode in modes}
    servers = {
        mode: spawn(_api_command(ports[mode]), modes[mode], env.work_dir / f"api-{n}.log")
        for n, mode in enumerate(modes)
    }
    try:
        for port in ports.values():
            wait_http(port, "/healthz")
        body = json_body({"jobType": "diag.echo", "payload": PAYLOAD})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {env.api_key}"}
        for _ in range(env.rounds):
            for mode, port in ports.items():
                rate = http_load(port, "/v1/jobs", lambda n: body, headers, requests=REQUESTS, concurrency=CLIENTS)
                results[mode].values.append(rate)
                env.redis.delete("pulse")
    finally:
        for server in servers.values():
            stop(server)
    return list(results.values())


def _drain(env: BenchEnv, modes: dict[str, dict[str, str]]) -> list[Result]:
    results = {mode: Result("telemetry", f"drain, telemetry {mode}") for mode in modes}
    app = create_celery(Settings(redis_url=env.redis_url, broker_url=env.redis_url))
    store = JobStore(env.redis)
    workers = {
        mode: (
            f"tel-{n}@bench",
            spawn(
                celery_worker("pulse_worker.app", f"idle-tel-{n}", CONCURRENCY, "-n", f"tel-{n}@bench"),
                modes[mode],
                env.work_dir / f"worker-{n}.log",
            ),
        )
        for n, mode in enumerate(modes)
    }
    try:
        for name, _process in workers.values():
            _wait_worker(app, name)
        for round_no in range(env.rounds):
            for n, (mode, (worker, _process)) in enumerate(workers.items()):
                queue = f"bench-tel-{n}-{round_no}"
                fill_pulse_queue(store, app, queue, JOBS)
                consume, waiting = pulse_lane(app, queue)
                start = functools.partial(_consume, app, consume, worker)
                results[mode].values.append(time_drain(env.redis, waiting, start, JOBS))
                _cancel(app, consume, worker)
    finally:
        for _name, process in workers.values():
            stop(process)
    return list(results.values())
