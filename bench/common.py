"""Shared bench machinery: processes, HTTP load, queue draining, medians."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from bench.redis_cost import OWN_COMMANDS, ClientSample, Cost
from pulse_core import keys
from pulse_core.tenants import hash_api_key

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchEnv:
    redis_url: str
    redis: Redis
    work_dir: Path
    tenants_file: Path
    api_key: str
    rounds: int = 3

    def env(self, **extra: str) -> dict[str, str]:
        # Nothing from the caller's shell decides a mode: no PULSE_*, no OTEL_* variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "OTEL_", "BENCH_", "PROMETHEUS_"))}
        env.update(
            PULSE_REDIS_URL=self.redis_url,
            PULSE_TENANTS_FILE=str(self.tenants_file),
            PULSE_HANDLER_MODULES="pulse_worker.diagnostics",
            PYTHONPATH=str(ROOT),
            BENCH_BROKER_URL=self.redis_url,  # the bare endpoint and plain workers: the same Redis
        )
        env.update(extra)
        return env


@dataclass
class Result:
    section: str
    name: str
    values: list[float] = field(default_factory=list)
    unit: str = "jobs/s"
    #: What each round cost the private Redis, per job (bench.redis_cost).
    costs: list[Cost] = field(default_factory=list)
    #: Commands per job by origin, from an untimed MONITOR sample (bench.redis_cost).
    sample: ClientSample | None = None
    #: Printed under the row (how it was measured, when that differs from the section's rule).
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def median_cost(self, read: Callable[[Cost], float]) -> float:
        return statistics.median(read(c) for c in self.costs) if self.costs else float("nan")


def spawn(command: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        list(command),
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live children
    (a prefork worker's pool), from ``/proc``; NaN where there is no ``/proc``. Robust to
    other load on a shared machine where a rate is not."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return float("nan")
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def gunicorn(app: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        app,
    ]


def celery_worker(app: str, queues: str, concurrency: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--queues",
        queues,
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        *extra,
    ]


def wait_http(port: int, path: str = "/", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def http_load(
    port: int,
    path: str,
    body_for: Callable[[int], bytes],
    headers: Mapping[str, str],
    *,
    requests: int,
    concurrency: int,
    expect: int = 202,
) -> float:
    """POST ``requests`` bodies with ``concurrency`` client threads; return requests/s."""
    counter = iter(range(requests))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", path, body=body_for(n), headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status != expect and len(failures) < 5:
                failures.append(f"{response.status} {data[:200]!r}")

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"unexpected answers: {failures}")
    return requests / elapsed


def drained(redis: Redis, queue: str, unfinished_at_most: int | None = None) -> bool:
    """No message waiting on ``queue`` and none delivered but unacknowledged (kombu's unacked
    hash: plain Celery); with ``unfinished_at_most``, also at most that many Pulse jobs left
    unfinished (the watch set: Pulse's transport keeps a delivered message in the worker's
    memory only, so the drained queue's jobs are done once they leave the watch set)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue)
        pipe.hlen("unacked")
        pipe.zcard(keys.WATCH)
        waiting, unacked, unfinished = pipe.execute()
    OWN_COMMANDS.update(("llen", "hlen", "zcard"))
    done = unfinished_at_most is None or unfinished <= unfinished_at_most
    return waiting == 0 and unacked == 0 and done


def time_drain(
    redis: Redis,
    queue: str,
    start_consuming: Callable[[], None],
    n: int,
    *,
    watched: bool = False,
    is_drained: Callable[[int | None], bool] | None = None,
    timeout: float = 600,
) -> float:
    """Start consuming a pre-filled queue; return messages/s until it is drained (``watched``:
    its ``n`` messages are Pulse jobs, done once they have left the watch set; ``is_drained``,
    given how many jobs may stay in the watch set, replaces ``drained`` as the test)."""
    most = int(redis.zcard(keys.WATCH)) - n if watched else None  # type: ignore[arg-type]
    done = is_drained or (lambda at_most: drained(redis, queue, at_most))
    start = time.perf_counter()
    start_consuming()
    deadline = start + timeout
    while not done(most):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"queue {queue} did not drain")
        time.sleep(0.005)
    return n / (time.perf_counter() - start)


def json_body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def write_tenants_file(path: Path, api_keys: Mapping[str, str]) -> Path:
    """A bench tenants file at ``path``: defaults no bench reaches (rate, backlog, storage),
    and each tenant (tenant id -> its API key)."""
    lines = ['[defaults]\nrate_limit = "1000000/second"\nmax_pending = 100000000\nmax_stored_bytes = 1099511627776']
    lines += [f'[tenants.{tenant}]\napi_key_sha256 = ["{hash_api_key(key)}"]' for tenant, key in api_keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
