"""The API's own CPU time per job, in one process: steadier than a rate on a shared machine.

``python -m bench.api_cpu batch [N]`` posts N batches of 500 ``diag.echo`` jobs (every other
one with a new idempotency key) through the Flask test client; ``python -m bench.api_cpu
single [N]`` calls the app's WSGI callable with N plain ``POST /v1/jobs`` (the fast submit
path, without the test client's own work). Both against a private Redis, JSON logs at
INFO to ``/dev/null`` (the "job accepted" line is written), the app's objects frozen out
of the collector as the gunicorn master does (``gc.freeze``). It prints the process's CPU
time per job (``time.process_time``: socket calls to Redis included, waiting for it not).
With ``BENCH_PROFILE=tottime`` (or ``cumtime``) it prints a cProfile instead.

Compare two trees by running each in turn, several times, interleaved
(``PYTHONPATH=<tree> python -m bench.api_cpu batch``), and take medians.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import logging
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from bench.common import write_tenants_file
from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.telemetry import logs

KEY = "api-cpu-bench-key"
BATCH = 500
PAYLOAD = {"n": 1, "text": "hello"}
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _batch_body() -> bytes:
    jobs = [
        {"jobType": "diag.echo", "payload": PAYLOAD, **({"idempotencyKey": str(uuid.uuid4())} if i % 2 else {})}
        for i in range(BATCH)
    ]
    return json.dumps({"jobs": jobs}).encode()


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "batch"
    if mode not in ("batch", "single"):
        print("usage: python -m bench.api_cpu batch|single [N]", file=sys.stderr)
        return 2
    count = int(argv[1]) if len(argv) > 1 else (20 if mode == "batch" else 3000)
    work = Path(tempfile.mkdtemp(prefix="pulse-api-cpu-"))
    tenants = write_tenants_file(work / "tenants.toml", {"bench": KEY})
    server = EmbeddedRedis(work / "redis", persist=False).start()
    try:
        redis = connect(server.url)
        settings = Settings(
            redis_url=server.url,
            broker_url=server.url,
            tenants_file=tenants,
            handler_modules=("pulse_worker.diagnostics",),
        )
        app = create_app(settings)
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logs.make_handler(open(os.devnull, "w"), "json"))  # noqa: SIM115 - for the process's life
        root.setLevel(logging.INFO)

        def empty() -> None:
            redis.flushall()
            announce(redis, ["diag.echo"], 3600)

        client = app.test_client()

        def batches(n: int) -> int:
            for i in range(n):
                response = client.post("/v1/batches", data=_batch_body(), headers=HEADERS)
                assert response.status_code == 200 and response.get_json()["accepted"] == BATCH
                if i % 5 == 4:
                    empty()
            return n * BATCH

        single = json.dumps({"jobType": "diag.echo", "payload": PAYLOAD}).encode()
        environ = EnvironBuilder(path="/v1/jobs", method="POST", data=single, headers=HEADERS).get_environ()

        def started(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            assert status.startswith("202"), status

        def singles(n: int) -> int:
            wsgi: Callable[..., Iterable[bytes]] = app.wsgi_app
            for i in range(n):
                b"".join(wsgi({**environ, "wsgi.input": io.BytesIO(single)}, started))
                if i % 2000 == 1999:
                    empty()
            return n

        run = batches if mode == "batch" else singles
        empty()
        run(2 if mode == "batch" else 200)  # warm-up
        empty()
        gc.freeze()
        sort = os.environ.get("BENCH_PROFILE")
        if sort:
            profile = cProfile.Profile()
            profile.enable()
            run(count)
            profile.disable()
            pstats.Stats(profile).sort_stats(sort).print_stats(40)
            return 0
        started_cpu = time.process_time()
        jobs = run(count)
        spent = time.process_time() - started_cpu
        print(f"{mode}: {spent / jobs * 1e6:.1f} µs of API CPU a job ({jobs} jobs)")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
