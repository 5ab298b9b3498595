"""Jobs/s through ``POST /v1/batches`` (500 jobs each, from wrk) beside a plain loop of ``apply_async``.

Pulse runs as ``pulse api`` runs it, with every guard on (auth, per-job rate limit,
idempotency keys on every other job, each one new; backlog cap; job records); the
plain side is the cheapest way to put the same messages on a queue from Python: one
``apply_async`` per job, in this process, on the same private Redis.
"""

from __future__ import annotations

import json
import time
import uuid

from bench import wrk
from bench.common import BenchEnv, Result, http_load, json_body, spawn, stop, wait_http
from bench.plain_stack import echo
from bench.redis_cost import client_commands
from bench.servers import pulse_api
from bench.submit import check_plain, measure_load
from pulse_cli.embedded_redis import free_port
from pulse_core.store.job_types import announce

BATCH = 500
SECONDS = 5
CONNECTIONS = 4
PLAIN_JOBS = 5000
SAMPLE_JOBS = 200
PAYLOAD = {"n": 1, "text": "hello"}
PULSE = f"pulse POST /v1/batches x{BATCH}"
PLAIN = "plain loop of apply_async"


def _python_body() -> bytes:
    jobs = [
        {"jobType": "diag.echo", "payload": PAYLOAD, **({"idempotencyKey": f"{uuid.uuid4()}"} if i % 2 else {})}
        for i in range(BATCH)
    ]
    return json_body({"jobs": jobs})


def _pulse_load(env: BenchEnv, port: int, seconds: float) -> tuple[float, int]:
    """(jobs/s, jobs) of batches posted for about ``seconds``."""
    if wrk.available():
        script = wrk.batch_script("/v1/batches", env.api_key, BATCH, json.dumps(PAYLOAD), "diag.echo")
        done = wrk.run(port, script, env.work_dir, seconds=seconds, connections=CONNECTIONS, name="batch")
        return done.rate * BATCH, done.requests * BATCH
    requests = max(4, int(seconds * 4))
    bodies = [_python_body() for _ in range(requests)]
    rate = http_load(
        port, "/v1/batches", bodies.__getitem__, _headers(env), requests=requests, concurrency=2, expect=200
    )
    return rate * BATCH, requests * BATCH


def _headers(env: BenchEnv) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {env.api_key}"}


def _plain_loop(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        echo.apply_async(args=(PAYLOAD,))
    return n / (time.perf_counter() - start)


def run(env: BenchEnv) -> list[Result]:
    pulse = Result("batch", PULSE)
    plain = Result("batch", PLAIN)
    announce(env.redis, ["diag.echo"], 3600)
    port = free_port()
    api = spawn(pulse_api(port), env.env(), env.work_dir / "batch-api.log")
    try:
        wait_http(port, "/healthz", timeout=60)
        _pulse_load(env, port, 1)  # warm-up
        _plain_loop(200)
        for _ in range(env.rounds):
            for result, load in (
                (pulse, lambda: _pulse_load(env, port, SECONDS)[0]),
                (plain, lambda: _plain_loop(PLAIN_JOBS)),
            ):
                rate, cost = measure_load(env, load)
                result.values.append(rate)
                result.costs.append(cost)

        def one_batch() -> int:
            http_load(
                port, "/v1/batches", lambda i: _python_body(), _headers(env), requests=1, concurrency=1, expect=200
            )
            return BATCH

        pulse.sample = client_commands(env.redis, one_batch)

        def plain_sample() -> int:
            _plain_loop(SAMPLE_JOBS)
            return SAMPLE_JOBS

        plain.sample = client_commands(env.redis, plain_sample)
        check_plain(plain)
        if not wrk.available():
            pulse.note = f"python client ({wrk.INSTALL_HINT})"
    finally:
        stop(api)
    return [pulse, plain]
