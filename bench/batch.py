"""Jobs/s through ``POST /v1/batches`` (500 jobs each) beside a plain loop of ``apply_async``.

Pulse runs on gunicorn with every guard on (auth, per-job rate limit, idempotency
keys, backlog cap, job records); the plain side is the cheapest way to put the
same number of messages on a queue from Python: one ``apply_async`` per job.
"""

from __future__ import annotations

import time
import uuid

from bench.common import BenchEnv, Result, gunicorn, http_load, json_body, spawn, stop, wait_http
from bench.plain_stack import echo
from pulse_cli.embedded_redis import free_port
from pulse_core.store.job_types import announce

BATCH = 500
BATCHES = 12
CONCURRENCY = 2
GUNICORN_WORKERS = 2
PAYLOAD = {"n": 1, "text": "hello"}


def run(env: BenchEnv) -> list[Result]:
    pulse = Result("batch", f"pulse POST /v1/batches x{BATCH}")
    plain = Result("batch", "plain loop of apply_async")
    announce(env.redis, ["diag.echo"], 3600)
    echo.app.conf.broker_url = env.redis_url
    port = free_port()
    api = spawn(gunicorn("pulse_api.wsgi:app", port, GUNICORN_WORKERS), env.env(), env.work_dir / "batch-api.log")
    try:
        wait_http(port, "/healthz")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {env.api_key}"}

        def batch(n: int) -> bytes:
            # Half the jobs carry an idempotency key, so that guard does real work too.
            jobs = [
                {"jobType": "diag.echo", "payload": PAYLOAD, **({"idempotencyKey": f"{uuid.uuid4()}"} if i % 2 else {})}
                for i in range(BATCH)
            ]
            return json_body({"jobs": jobs})

        for _ in range(env.rounds):
            bodies = [batch(n) for n in range(BATCHES)]  # fresh keys: no replays across rounds
            rate = http_load(
                port, "/v1/batches", bodies.__getitem__, headers, requests=BATCHES, concurrency=CONCURRENCY, expect=200
            )
            pulse.values.append(rate * BATCH)
            env.redis.delete("pulse")
            start = time.perf_counter()
            for _ in range(BATCH * BATCHES):
                echo.apply_async(args=(PAYLOAD,))
            plain.values.append(BATCH * BATCHES / (time.perf_counter() - start))
            env.redis.delete("plain")
    finally:
        stop(api)
    return [pulse, plain]
