"""Jobs/s through ``POST /v1/jobs`` on gunicorn, beside a bare Flask + ``apply_async`` endpoint."""

from __future__ import annotations

from bench.common import BenchEnv, Result, gunicorn, http_load, json_body, spawn, stop, wait_http
from pulse_cli.embedded_redis import free_port
from pulse_core.store.job_types import announce

REQUESTS = 2000
CONCURRENCY = 8
GUNICORN_WORKERS = 2


def run(env: BenchEnv) -> list[Result]:
    pulse = Result("submit", "pulse POST /v1/jobs")
    plain = Result("submit", "flask + apply_async")
    announce(env.redis, ["diag.echo"], 3600)  # the API accepts diag.echo with no worker running
    pulse_port, plain_port = free_port(), free_port()
    api = spawn(gunicorn("pulse_api.wsgi:app", pulse_port, GUNICORN_WORKERS), env.env(), env.work_dir / "api.log")
    bare = spawn(
        gunicorn("bench.plain_stack:flask_app", plain_port, GUNICORN_WORKERS), env.env(), env.work_dir / "bare.log"
    )
    try:
        wait_http(pulse_port, "/healthz")
        wait_http(plain_port, "/")
        body = json_body({"jobType": "diag.echo", "payload": {"n": 1, "text": "hello"}})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {env.api_key}"}
        for _ in range(env.rounds):
            pulse.values.append(
                http_load(pulse_port, "/v1/jobs", lambda n: body, headers, requests=REQUESTS, concurrency=CONCURRENCY)
            )
            plain.values.append(
                http_load(plain_port, "/jobs", lambda n: body, headers, requests=REQUESTS, concurrency=CONCURRENCY)
            )
            env.redis.delete("plain", *env.redis.scan_iter(match="pulse/*", count=1000))
    finally:
        stop(api)
        stop(bare)
    return [pulse, plain]
