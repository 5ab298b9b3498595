"""Jobs/s drained by a Pulse worker, beside a plain Celery task with the same settings.

The Pulse worker runs with every execution guarantee on: a claim per attempt
(lease, attempt number), the final transition as one script, per-job time limits
in each message, the lease-refreshing and sweeping guardian thread. The plain task
shares its pool, concurrency, prefetch and ack settings.

Each worker starts on an idle queue; a queue is filled while nobody consumes it,
then the worker is told to consume it (``add_consumer``) and the clock runs until
no message is waiting or unacknowledged.

The same Pulse worker then drains jobs admitted through ``POST /v1/batches``, so that
they wait in the fair dispatcher's structures (``pulse_core.store.dispatch``) and reach
the queue as the dispatcher moves them: first one tenant's ``MANY_TENANTS x PER_TENANT``
jobs, then ``MANY_TENANTS`` tenants' ``PER_TENANT`` jobs each (issue 11: the drain rate
must not fall with the number of tenants). The clock runs until no tenant is active on
the queue and no message is waiting or unacknowledged.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from celery import Celery
from flask.testing import FlaskClient
from redis import Redis

from bench.common import BenchEnv, Result, celery_worker, spawn, stop, time_drain, tree_cpu_seconds
from bench.plain_stack import echo
from bench.redis_cost import OWN_COMMANDS, client_commands, measured, pending_jobs
from bench.submit import many_tenants_file
from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import broker_priority, create_celery, publish_job, redis_list, waiting_lists
from pulse_core.jobs import DEFAULT_PRIORITY, Job, new_job_id, new_trace_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.tenants import hash_api_key

JOBS = 2000
SAMPLE_JOBS = 100
CONCURRENCY = 2
PAYLOAD = {"n": 1, "text": "hello"}
#: The many-tenants case: this many tenants, each with ``PER_TENANT`` jobs, admitted by batches.
#: Issue 11 names 2 jobs a tenant; at about 240 jobs/s on a busy 2-core machine the pair of
#: rows then takes near 3 minutes, so the default is 1 (each job's tenant enters the active
#: set and leaves it: the dispatcher's busiest path).
MANY_TENANTS = 10_000
PER_TENANT = 1
#: Rounds of the one-tenant / many-tenants pair (one is long enough: each drains
#: ``MANY_TENANTS x PER_TENANT`` jobs).
MANY_ROUNDS = 1
BATCH = 500
ONE_TENANT = f"pulse, 1 tenant x {MANY_TENANTS * PER_TENANT:,}, dispatched"
MANY = f"pulse, {MANY_TENANTS:,} tenants x {PER_TENANT}, dispatched"
ONE_TENANT_CPU = f"1 tenant x {MANY_TENANTS * PER_TENANT:,}: worker CPU per job"
MANY_CPU = f"{MANY_TENANTS:,} tenants x {PER_TENANT}: worker CPU per job"
#: The same pair drained by a worker that records no metrics (``PULSE_METRICS=off``): a pool
#: process's first job of a (tenant, jobType) creates that pair's Prometheus series (two
#: counters and two histograms, 41 values in its multiprocess file), which the many-tenants
#: row pays on every job and the one-tenant row once; this pair shows the dispatcher apart.
METRICS_OFF = ", metrics off"
ONE_TENANT_NO_METRICS = ONE_TENANT + METRICS_OFF
MANY_NO_METRICS = MANY + METRICS_OFF


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


def tenants_file(env: BenchEnv) -> tuple[Path, list[str]]:
    """The bench tenant and ``MANY_TENANTS`` more in one tenants file; the many tenants' keys."""
    path, many_keys = many_tenants_file(env.work_dir, MANY_TENANTS)
    path.write_text(path.read_text() + f'[tenants.bench]\napi_key_sha256 = ["{hash_api_key(env.api_key)}"]\n')
    return path, many_keys


def submit_batches(client: FlaskClient, api_keys: list[str], per_key: int) -> int:
    """Admit ``per_key`` diag.echo jobs for each key's tenant through ``POST /v1/batches``."""
    body = {"jobType": "diag.echo", "payload": PAYLOAD}
    admitted = 0
    for api_key in api_keys:
        left = per_key
        while left:
            size = min(left, BATCH)
            answer = client.post(
                "/v1/batches", json={"jobs": [body] * size}, headers={"Authorization": f"Bearer {api_key}"}
            )
            took = sum("job" in item for item in (answer.get_json() or {}).get("items", []))
            if answer.status_code != 200 or took != size:
                raise RuntimeError(f"batch not admitted: {answer.status_code} {answer.get_data()[:300]!r}")
            admitted += size
            left -= size
    return admitted


def dispatch_drained(redis: Redis, queue: str, unfinished_at_most: int | None) -> bool:
    """No tenant active on ``queue`` (nothing in a ready set), no message on its lists, none
    delivered but unacknowledged, and at most ``unfinished_at_most`` jobs in the watch set
    (Pulse's transport keeps a delivered message in the worker's memory, not in Redis)."""
    lists = waiting_lists(queue)
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.active(queue))
        for name in lists:
            pipe.llen(name)
        pipe.hlen("unacked")
        pipe.zcard(keys.WATCH)
        *counts, unfinished = pipe.execute()
    OWN_COMMANDS.update({"zcard": 2, "llen": len(lists), "hlen": 1})
    return not any(counts) and (unfinished_at_most is None or unfinished <= unfinished_at_most)


def run(env: BenchEnv) -> list[Result]:
    settings = Settings(redis_url=env.redis_url, broker_url=env.redis_url)
    pulse_app = create_celery(settings)
    store = JobStore(env.redis)
    plain_env = env.env()
    many_file, many_keys = tenants_file(env)

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
                env.env(PULSE_TENANTS_FILE=str(many_file)),  # the tenants of the many-tenants case too
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
            start = functools.partial(_consume, pulse_app, consume, worker)
            rate = time_drain(env.redis, waiting, start, n, watched=worker == workers["pulse"][0])
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
        results.update(_many_tenants(env, pulse_app, "pulse@bench", workers["pulse"][1].pid, many_file, many_keys))
    finally:
        for _name, process in workers.values():
            stop(process)
    quiet = spawn(
        celery_worker("pulse_worker.app", "idle-pulse-quiet", CONCURRENCY, "-n", "pulsequiet@bench"),
        env.env(PULSE_TENANTS_FILE=str(many_file), PULSE_METRICS="off"),
        env.work_dir / "pulse-quiet-worker.log",
    )
    try:
        _wait_worker(pulse_app, "pulsequiet@bench")
        off = _many_tenants(env, pulse_app, "pulsequiet@bench", quiet.pid, many_file, many_keys, suffix=METRICS_OFF)
        results.update({f"{kind}{METRICS_OFF}": result for kind, result in off.items() if not kind.endswith("cpu")})
    finally:
        stop(quiet)
    return list(results.values())


def _many_tenants(
    env: BenchEnv,
    pulse_app: Celery,
    worker: str,
    worker_pid: int,
    many_file: Path,
    many_keys: list[str],
    *,
    suffix: str = "",
) -> dict[str, Result]:
    """One tenant's jobs, then as many spread over ``MANY_TENANTS`` tenants, admitted while
    nobody consumes their queue, drained by the same Pulse worker (``worker``): jobs/s, and the
    CPU time the worker (main process and pool) spent per job, which other load on a shared
    machine moves far less than the rate. ``suffix`` ends the rows' names."""
    results = {
        "one": Result("drain", ONE_TENANT + suffix),
        "many": Result("drain", MANY + suffix),
        "one-cpu": Result("drain", ONE_TENANT_CPU + suffix, unit="ms"),
        "many-cpu": Result("drain", MANY_CPU + suffix, unit="ms"),
    }
    n = MANY_TENANTS * PER_TENANT
    for round_no in range(MANY_ROUNDS):
        for kind, api_keys, per_key in (("one", [env.api_key], n), ("many", many_keys, PER_TENANT)):
            queue = f"bench-{kind}-tenants-{round_no}{'-quiet' if suffix else ''}"
            who = f"{kind} tenant(s){suffix}"
            settings = Settings(
                redis_url=env.redis_url, broker_url=env.redis_url, tenants_file=many_file, default_queue=queue
            )
            started = time.perf_counter()
            admitted = submit_batches(create_app(settings).test_client(), api_keys, per_key)
            print(
                f"   {who}: {admitted:,} jobs admitted by batches in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            cpu = tree_cpu_seconds(worker_pid)
            with measured(env.redis) as cost:
                rate = time_drain(
                    env.redis,
                    queue,
                    functools.partial(_consume, pulse_app, queue, worker),
                    admitted,
                    watched=True,
                    is_drained=functools.partial(dispatch_drained, env.redis, queue),
                    timeout=900,
                )
            cpu = tree_cpu_seconds(worker_pid) - cpu
            _cancel(pulse_app, queue, worker)
            left = pending_jobs(env.redis)
            if left:
                raise RuntimeError(f"{left} jobs of {who} still pending after the drain")
            results[kind].values.append(rate)
            results[kind].costs.append(cost(admitted))
            results[f"{kind}-cpu"].values.append(cpu * 1000 / admitted)
            print(
                f"   {who}: drained at {rate:.0f} jobs/s, worker CPU {cpu * 1000 / admitted:.2f} ms/job",
                flush=True,
            )
    return results
