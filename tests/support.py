"""Test helpers: tenants, worker subprocesses and polling, all against real processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis

from pulse_core import keys
from pulse_core.broker.celery_app import waiting_lists
from pulse_core.http_handlers.attempts import AttemptTokens
from pulse_core.jobs import Job, JobState
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import live_job_types
from pulse_core.tenants import hash_api_key

T = TypeVar("T")
HANDLERS_DIR = Path(__file__).parent / "handlers"
ROOT = Path(__file__).parent.parent

#: tenant id -> API key, for the tests' tenants file.
TENANT_KEYS = {
    "acme": "acme-secret-key",
    "globex": "globex-secret-key",
    # Tenants of their own for the tests that exhaust a limit (one test each).
    "racer": "racer-secret-key",
    "sprinter": "sprinter-secret-key",
    "tight-a": "tight-a-secret-key",
    "tight-b": "tight-b-secret-key",
    "multi": "multi-secret-key",
    "batcher": "batcher-secret-key",
    "backlog": "backlog-secret-key",
    "small": "small-secret-key",
    "lister": "lister-secret-key",
    "ties": "ties-secret-key",
    "dead-ties": "dead-ties-secret-key",
    "refusals": "refusals-secret-key",
    "idem": "idem-secret-key",
    # The recovery tests' own tenant, so its backlog count can be checked exactly.
    "recover": "recover-secret-key",
    # The clock tests' own tenant: they end its running jobs by hand, so its count is checked exactly.
    "clock": "clock-secret-key",
    # The walls test: one tenant's jobs, another tenant trying them.
    "walled": "walled-secret-key",
    "intruder": "intruder-secret-key",
    # Replays go through the door: a backlog cap and a rate limit of their own.
    "replay-cap": "replay-cap-secret-key",
    "replay-rate": "replay-rate-secret-key",
    # The storage budget's tenants: one that fills a small budget, one beside it, one whose
    # counters are reconciled, one whose results do not fit.
    "budget-a": "budget-a-secret-key",
    "budget-b": "budget-b-secret-key",
    "budget-flow": "budget-flow-secret-key",
    "budget-result": "budget-result-secret-key",
}
#: Per-tenant settings that differ from [defaults].
TENANT_SETTINGS = {
    "racer": 'rate_limit = "100/minute"',
    "sprinter": 'rate_limit = "10/second"',
    "tight-a": 'rate_limit = "5/minute"',
    "tight-b": 'rate_limit = "5/minute"',
    "multi": 'rate_limit = "100/hour;3/day"',
    "batcher": 'rate_limit = "5/minute"',
    "backlog": "max_pending = 3",
    "refusals": "max_pending = 1",
    "small": "max_payload_bytes = 1024",
    "idem": 'rate_limit = "3/minute"',
    "replay-cap": "max_pending = 2",
    "replay-rate": 'rate_limit = "2/minute"',
    "budget-a": 'rate_limit = "1000/hour"\nmax_stored_bytes = 20000',
    "budget-b": 'rate_limit = "1000/hour"',
    "budget-result": "max_stored_bytes = 4000",
}


def witness_key(job_id: str) -> str:
    """Where tests/handlers/witness_handlers.py records each handler start of a job."""
    return f"witness:{job_id}"


def witness_starts(redis: Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis.lrange(witness_key(job_id), 0, -1)]


def waiting_messages(redis: Redis, queue: str) -> int:
    """Jobs waiting on ``queue``: its broker lists (all priorities) and its ready sets."""
    on_broker = sum(int(redis.llen(name)) for name in waiting_lists(queue))
    ready = sum(int(redis.zcard(keys.ready(queue, t))) for t in redis.zrange(keys.active(queue), 0, -1))
    return on_broker + ready


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def write_tenants_file(
    path: Path,
    extra: str = "",
    *,
    tenant_settings: Mapping[str, str] | None = None,
    keys: Mapping[str, str] | None = None,
) -> Path:
    """The tests' tenants file; ``tenant_settings`` adds lines to tenants' tables, ``keys``
    adds tenants, ``extra`` is appended (e.g. ``[job_types."x"]`` tables)."""
    lines = ["[defaults]", 'rate_limit = "1000/second"', ""]
    for tenant, key in {**TENANT_KEYS, **(keys or {})}.items():
        lines += [f"[tenants.{tenant}]", f'api_key_sha256 = ["{hash_api_key(key)}"]']
        lines += [TENANT_SETTINGS.get(tenant, ""), (tenant_settings or {}).get(tenant, ""), ""]
    path.write_text("\n".join(lines) + extra)
    return path


def post_from_new_process(
    env: Mapping[str, str],
    tenant: str,
    bodies: list[Any],
    start_line: tuple[str, int],
    headers: Mapping[str, str] | None = None,
) -> list[tuple[int, dict[str, str], Any]]:
    """In a fresh process (an API process of its own): build the app, meet the other
    processes at ``start_line`` (a Redis counter key and how many processes), then
    POST each body; returns (status, headers, JSON) per answer."""
    from pulse_api import create_app  # imported here: this runs in a spawned child

    app = create_app(Settings.from_env(env))
    client = app.test_client()
    client.get("/healthz")  # warmed up before the start line
    redis = connect(env["PULSE_REDIS_URL"])
    key, parties = start_line
    redis.incr(key)
    wait_for(lambda: int(redis.get(key) or 0) >= parties, timeout=60, interval=0.005)
    answers = []
    for body in bodies:
        response = client.post("/v1/jobs", json=body, headers={**auth(tenant), **(headers or {})})
        answers.append((response.status_code, dict(response.headers), response.get_json()))
    return answers


def forget_http_handlers(redis: Redis) -> None:
    """Remove every HTTP handler registration, so later apps start without ``PULSE_SECRET_KEY``."""
    for tenant in redis.smembers(keys.HTTP_HANDLER_TENANTS):
        redis.delete(keys.http_handlers(str(tenant)))
    redis.delete(keys.HTTP_HANDLER_TENANTS)


def wait_for(predicate: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy; fail the test with what it last returned."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``PULSE_*`` variables that give a child process these settings (from their declarations)."""
    return settings.to_env()


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HANDLERS_DIR), str(ROOT)])
    env.update(overrides)
    return env


class WorkerProcess:
    """A real ``celery -A pulse_worker.app worker`` subprocess."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        queues: Iterable[str] = ("pulse",),
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: Iterable[str] = (),
        quiet: bool = False,
        default_name: bool = False,
    ) -> None:
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pulse_worker.app",
            *(["--quiet"] if quiet else []),
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            ",".join(queues),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            # default_name: no --hostname, so the worker names itself as in production.
            *([] if default_name else ["--hostname", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"]),
            *extra_args,
        ]
        self.env = child_env(env)
        self.process: subprocess.Popen[bytes] | None = None
        #: Port of the worker's Prometheus endpoint, when it serves one.
        self.metrics_port: int | None = None

    def runs(self, owner: str) -> bool:
        """Whether a lease ``owner`` (``<node>@<host>/<task id>``) is an attempt of this worker
        (started with its own ``--hostname``)."""
        node = self.command[self.command.index("--hostname") + 1].split("@")[0]
        return owner.startswith(node + "@")

    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, redis: Redis, job_types: Iterable[str], timeout: float = 30.0) -> None:
        wanted = set(job_types)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log()}")
            return wanted <= live_job_types(redis) and "ready" in self.log()

        wait_for(ready, timeout=timeout, interval=0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the worker and every child in its process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # reap stray pool children
        self._log.close()
        return self.process.returncode


def job_state(client: Any, tenant: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def wait_for_state(
    client: Any, tenant: str, job_id: str, states: Iterable[str], timeout: float = 20.0
) -> dict[str, Any]:
    wanted = set(states)

    def reached() -> dict[str, Any] | None:
        doc = job_state(client, tenant, job_id)
        return doc if doc["state"] in wanted else None

    return wait_for(reached, timeout=timeout)


@contextlib.contextmanager
def running_workers(
    redis: Redis,
    settings: Settings,
    tmp_path: Path,
    job_types: Iterable[str],
    *,
    concurrency: int,
    queues: list[str] | None = None,
    count: int = 2,
) -> Iterator[list[WorkerProcess]]:
    """``count`` worker processes on ``queues`` (the settings' default queue), each announcing
    ``job_types`` before the block runs; stopped when it ends, however it ends."""
    workers = [
        WorkerProcess(
            settings_env(settings),
            tmp_path / f"w{n}.log",
            queues=queues or [settings.default_queue],
            concurrency=concurrency,
        )
        for n in range(count)
    ]
    try:
        for worker in workers:
            worker.start().wait_ready(redis, job_types)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


class ApiProcess:
    """A real ``pulse api`` (gunicorn) subprocess on a free port."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, extra_args: Iterable[str] = ()) -> None:
        from pulse_cli.embedded_redis import free_port

        self.port = free_port()
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "pulse_cli.cli",
            "api",
            "--port",
            str(self.port),
            "--metrics-dir",
            str(log_path.parent / f"metrics-{self.port}"),
            *extra_args,
        ]
        self.env = child_env(env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        import urllib.request

        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"pulse api exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(answers, timeout=timeout, interval=0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


def scrape_api(client: Any) -> str:
    """What the API's metrics endpoint (its own port, never the public one) would answer."""
    from prometheus_client import generate_latest

    from pulse_api.observability import metrics_registry

    return generate_latest(metrics_registry(client.application)).decode()


def post_job_over_http(port: int, *, timeout: float = 10.0) -> int:
    """POST one ``diag.echo`` job as acme to an API on ``port``, on a connection of its own;
    the answer's status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/jobs",
            body=json.dumps({"jobType": "diag.echo", "payload": {}}),
            headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def handed_off(redis: Redis, job: Job, *, fallback_max_retries: int = 1) -> tuple[Job, str]:
    """Create ``job`` and run its first attempt up to its receiver's 202: a running attempt
    handed off (``HANDED_OFF_OWNER``), its lease 60 s; the claimed job and its attempt token."""
    store, tokens = JobStore(redis), AttemptTokens(redis)
    store.create(job)
    claimed = store.claim(
        job.job_id, owner="w", lease_seconds=60, fallback_max_retries=fallback_max_retries, lost_error={}
    )
    assert claimed.job is not None
    token, stored = tokens.new(claimed.job)
    redis.set(keys.http_attempt_token(job.job_id), stored, ex=600)
    assert tokens.hand_off(claimed.job, 60)
    return claimed.job, token


def bury(store: JobStore, jobs: Iterable[Job]) -> list[str]:
    """Create each of ``jobs`` and end it dead after one attempt (a dead letter, its tenant's
    backlog count back to what it was); their ids, in order."""
    ids = []
    for job in jobs:
        store.create(job)
        claimed = store.claim(job.job_id, owner="w", lease_seconds=60, fallback_max_retries=0, lost_error={})
        assert claimed.job is not None
        assert store.finalize(claimed.job, JobState.DEAD, error={"type": "Boom", "message": "x"})
        ids.append(job.job_id)
    return ids
