"""The cost of telemetry: submit and drain jobs/s with tracing and metrics on, then off.

"On" is what an operator runs: the OTLP/HTTP span exporter (batching), every trace
sampled (``OTEL_TRACES_SAMPLER=always_on``), sending to a local sink in this
process that accepts and discards every export, and Prometheus metrics in
multiprocess mode (files under PROMETHEUS_MULTIPROC_DIR), with the worker's metrics
endpoint up. "On, 10% sampled" samples with
``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 0.1 (the lever an operator
has). "Off" is ``PULSE_METRICS=off`` and ``OTEL_SDK_DISABLED=true``, with no OTEL or
PULSE variable inherited from the shell. Each mode has its own sink, and the
section fails when the switch did not switch (no spans or metric files with it
on, any span with it off). JSON logs are the same in all. The API servers (run as
``pulse api`` runs them, loaded from wrk) and the workers of each mode run side by
side and take turns, round by round.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import BenchEnv, Result, celery_worker, spawn, stop, time_drain
from bench.drain import _cancel, _consume, _wait_worker, fill_pulse_queue, pulse_lane
from bench.redis_cost import measured, reset
from bench.servers import pulse_api
from bench.submit import Target, measure_rounds
from pulse_cli.embedded_redis import free_port
from pulse_core.broker.celery_app import create_celery
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce

JOBS = 1000
CONCURRENCY = 2
PAYLOAD = {"n": 1, "text": "hello"}


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing; counts per server."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.exports += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    exports = 0


def _modes(env: BenchEnv, sinks: dict[str, _SinkServer]) -> dict[str, dict[str, str]]:
    def on(mode: str, **extra: str) -> dict[str, str]:
        metrics_dir = env.work_dir / f"metrics-{len(mode)}-{mode[:2]}"
        metrics_dir.mkdir(exist_ok=True)
        return env.env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sinks[mode].server_address[1]}",
            OTEL_SERVICE_NAME="pulse-bench",
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            PULSE_WORKER_METRICS_PORT=str(free_port()),
            **extra,
        )

    return {
        ON: on(ON, OTEL_TRACES_SAMPLER="always_on"),
        SAMPLED: on(SAMPLED, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1"),
        # Off as an operator turns it off, and nothing left that could turn it on.
        OFF: env.env(PULSE_METRICS="off", OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="none"),
    }


ON, SAMPLED, OFF = "on", "on, 10% sampled", "off"


def run(env: BenchEnv) -> list[Result]:
    sinks = {mode: _SinkServer(("127.0.0.1", free_port()), _Sink) for mode in (ON, SAMPLED, OFF)}
    for sink in sinks.values():
        threading.Thread(target=sink.serve_forever, daemon=True).start()
    modes = _modes(env, sinks)
    try:
        results = _submit(env, modes)
        _check_switch(sinks, modes, "submit")
        reset(env.redis)  # the submitted jobs would fall due and keep the workers' sweep busy
        results += _drain(env, modes)
        _check_switch(sinks, modes, "drain")
    finally:
        for sink in sinks.values():
            sink.shutdown()
    print("   OTLP exports by mode: " + ", ".join(f"{m} {s.exports}" for m, s in sinks.items()), flush=True)
    return results


def _check_switch(sinks: dict[str, _SinkServer], modes: dict[str, dict[str, str]], phase: str) -> None:
    """The switch must switch: spans and metric files with telemetry on, none with it off."""
    _wait_for(lambda: sinks[ON].exports > 0, 10)  # spans leave in batches, every few seconds
    if sinks[ON].exports == 0:
        raise RuntimeError(f"telemetry {phase}: tracing on exported no spans (the exporter sends every 5 s)")
    if sinks[OFF].exports:
        raise RuntimeError(f"telemetry {phase}: tracing off exported {sinks[OFF].exports} times")
    on_dir = Path(modes[ON]["PROMETHEUS_MULTIPROC_DIR"])
    if not any(on_dir.glob("*.db")):
        raise RuntimeError(f"telemetry {phase}: metrics on wrote no files in {on_dir}")


def _submit(env: BenchEnv, modes: dict[str, dict[str, str]]) -> list[Result]:
    announce(env.redis, ["diag.echo"], 3600)
    targets = [
        Target(
            Result("telemetry", f"submit, telemetry {mode}"),
            pulse_api(free_port()),
            modes[mode],
            "/v1/jobs",
            [env.api_key],
        )
        for mode in modes
    ]
    measure_rounds(env, targets)
    return [t.result for t in targets]


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


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
                with measured(env.redis) as cost:
                    results[mode].values.append(time_drain(env.redis, waiting, start, JOBS, watched=True))
                results[mode].costs.append(cost(JOBS))
                _cancel(app, consume, worker)
    finally:
        for _name, process in workers.values():
            stop(process)
    return list(results.values())
