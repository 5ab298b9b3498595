"""Jobs/s drained by a Pulse worker, beside a plain Celery task with the same settings.

The Pulse worker runs with every execution guarantee on: a claim per attempt
(lease, attempt number), the final transition as one script, per-job time limits
in each message, the lease-refreshing and sweeping guardian thread. The plain task
shares its pool, concurrency, prefetch and ack settings.

Each worker starts on an idle queue; a queue is filled while nobody consumes it,
then the worker is told to consume it (``add_consumer``) and the clock runs until
no message is waiting or unacknowledged.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from celery import Celery

from bench.common import BenchEnv, Result, celery_worker, spawn, stop, time_drain
from bench.plain_stack import echo
from bench.redis_cost import client_commands, measured
from pulse_core.broker.celery_app import broker_priority, create_celery, publish_job, redis_list
from pulse_core.jobs import DEFAULT_PRIORITY, Job, new_job_id, new_trace_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore

JOBS = 2000
SAMPLE_JOBS = 100
CONCURRENCY = 2
PAYLOAD = {"n": 1, "text": "hello"}


def _wait_worker(app: Celery, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError(f"worker {name} did not answer ping")


def fill_pulse_queue(
    store: JobStore,
    app: Celery,
    queue: str,
    n: int,
    *,
    job_type: str = "diag.echo",
    payload: dict[str, Any] | None = None,
) -> None:
    """Record and publish ``n`` jobs of the bench tenant on ``queue`` (diag.echo by default)."""
    for _ in range(n):
        job = Job(
            job_id=new_job_id(),
            tenant_id="bench",
            job_type=job_type,
            queue=queue,
            payload=PAYLOAD if payload is None else payload,
            trace_id=new_trace_id(),
            created_at=utc_now(),
            max_retries=3,
            timeout_seconds=60,
        )
        store.create(job, watch_at=time.time() + 600)  # watched, as an admitted job is
        publish_job(app, job)


def pulse_lane(app: Celery, queue: str) -> tuple[str, str]:
    """``queue`` (what a worker consumes) and the Redis list its default-priority messages
    wait in (what the clock watches)."""
    return queue, redis_list(queue, broker_priority(app, DEFAULT_PRIORITY))


def _consume(app: Celery, queue: str, worker: str) -> None:
    app.control.add_consumer(queue, destination=[worker], reply=True, timeout=5)


def _cancel(app: Celery, queue: str, worker: str) -> None:
    app.control.cancel_consumer(queue, destination=[worker], reply=True, timeout=5)


def run(env: BenchEnv) -> list[Result]:
    settings = Settings(redis_url=env.redis_url, broker_url=env.redis_url)
    pulse_app = create_celery(settings)
    store = JobStore(env.redis)
    plain_env = env.env()

    results = {
        "pulse": Result("drain", "pulse worker, diag.echo"),
        "plain": Result("drain", "plain celery task, no result backend"),
        "plain+results": Result("drain", "plain celery task, redis result backend"),
    }
    workers = {
        "pulse": (
            "pulse@bench",
            spawn(
                celery_worker("pulse_worker.app", "idle-pulse", CONCURRENCY, "-n", "pulse@bench"),
                env.env(),
                env.work_dir / "pulse-worker.log",
            ),
        ),
        "plain": (
            "plain@bench",
            spawn(
                celery_worker("bench.plain_stack", "idle-plain", CONCURRENCY, "-n", "plain@bench"),
                plain_env,
                env.work_dir / "plain-worker.log",
            ),
        ),
        "plain+results": (
            "plainr@bench",
            spawn(
                celery_worker("bench.plain_stack", "idle-plainr", CONCURRENCY, "-n", "plainr@bench"),
                {**plain_env, "BENCH_STORE_RESULTS": "1"},
                env.work_dir / "plainr-worker.log",
            ),
        ),
    }
    try:
        for name, _process in workers.values():
            _wait_worker(pulse_app, name)

        def fill(kind: str, queue: str, n: int) -> tuple[str, str]:
            """Fill ``queue`` while nobody consumes it; return (what to consume, the list to watch)."""
            if kind == "pulse":
                fill_pulse_queue(store, pulse_app, queue, n)
                return pulse_lane(pulse_app, queue)
            for _ in range(n):
                echo.apply_async(args=(PAYLOAD,), queue=queue)
            return queue, queue

        def drain(worker: str, lists: tuple[str, str], n: int) -> float:
            consume, waiting = lists
            rate = time_drain(env.redis, waiting, functools.partial(_consume, pulse_app, consume, worker), n)
            _cancel(pulse_app, consume, worker)
            return rate

        def drain_count(worker: str, lists: tuple[str, str]) -> int:
            drain(worker, lists, SAMPLE_JOBS)
            return SAMPLE_JOBS

        for round_no in range(env.rounds):
            for kind, (worker, _process) in workers.items():
                lists = fill(kind, f"bench-{kind}-{round_no}", JOBS)
                with measured(env.redis) as cost:
                    results[kind].values.append(drain(worker, lists, JOBS))
                results[kind].costs.append(cost(JOBS))
        for kind, (worker, _process) in workers.items():
            # Untimed: which commands a job's run sends from the worker, and which run in scripts.
            lists = fill(kind, f"bench-{kind}-sample", SAMPLE_JOBS)
            results[kind].sample = client_commands(env.redis, functools.partial(drain_count, worker, lists))
    finally:
        for _name, process in workers.values():
            stop(process)
    return list(results.values())
