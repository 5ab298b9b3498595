"""Every non-final job has a deadline someone checks: lost messages, crashed APIs and
replays, cancels after a crash, and a sweep that keeps up. Faults are injected for real."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import free_port
from pulse_core import keys
from pulse_core.broker.celery_app import WORKER_ENV, create_celery, encode_message
from pulse_core.guards.idempotency import store_key
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore, RecheckPolicy
from pulse_core.store.job_types import announce
from pulse_core.store.recovery import sweep
from tests.invariants import backlog_mismatches, unowned_keys
from tests.support import (
    ROOT,
    TENANT_KEYS,
    WorkerProcess,
    child_env,
    settings_env,
    wait_for,
    wait_for_state,
    waiting_messages,
    witness_starts,
)

TENANT = "recover"
HEADERS = {"Authorization": f"Bearer {TENANT_KEYS[TENANT]}"}
#: How soon a queued job nobody claimed is looked at, in these tests.
CHECK = 1.0


@pytest.fixture
def fast(isolated_settings: Settings, redis: Redis) -> Settings:
    """Settings of a queue of this test's own, whose queued jobs are checked after 1 s
    (the jobTypes announced, so jobs are accepted before a worker is up)."""
    announce(redis, ["witness.sleep", "diag.fail"], 120)
    return replace(isolated_settings, queued_check_seconds=CHECK)


def start_worker(settings: Settings, tmp_path: Path, name: str, redis: Redis) -> WorkerProcess:
    env = {**settings_env(settings), **WORKER_ENV}
    worker = WorkerProcess(env, tmp_path / f"{name}.log", queues=[settings.default_queue], concurrency=2).start()
    worker.wait_ready(redis, ("witness.sleep", "diag.fail"))
    return worker


def submit(client: FlaskClient, job_type: str, payload: dict, **extra: object) -> str:
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload, **extra}, headers=HEADERS)
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["jobId"])


def assert_invariants(redis: Redis) -> None:
    """The recovery tenant's backlog is exact and nothing of Pulse's is left unowned."""
    assert TENANT not in backlog_mismatches(redis)
    assert unowned_keys(redis) == []


@contextlib.contextmanager
def stalled_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a broker that hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()


@contextlib.contextmanager
def api_process(settings: Settings, broker_url: str, tmp_path: Path) -> Iterator[int]:
    """``pulse api`` as a real process, whose broker is ``broker_url``."""
    port = free_port()
    env = child_env({**settings_env(replace(settings, broker_url=broker_url)), "PULSE_METRICS": "off"})
    log = (tmp_path / "api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse_cli.cli", "api", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _answers(port), timeout=30)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        log.close()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
        return bool(r.status == 200)
    return False


def kill_while_publishing(port: int, path: str, body: dict | None, found: callable) -> None:  # type: ignore[valid-type]
    """Send a request that hangs on the stalled broker; SIGKILL the API once ``found()``."""

    def send() -> None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=data if data is not None else b"",
            headers={**HEADERS, **({"Content-Type": "application/json"} if data is not None else {})},
            method="POST",
        )
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=30).close()

    threading.Thread(target=send, daemon=True).start()
    wait_for(found, timeout=20)


@pytest.mark.slow
def test_a_queued_job_whose_message_is_lost_still_runs(fast: Settings, redis: Redis, tmp_path: Path) -> None:
    # given a queued job whose message vanished from the broker before any worker took it
    # (as when a worker pops it and is SIGKILLed before recording it)
    client = create_app(fast).test_client()
    job_id = submit(client, "witness.sleep", {"seconds": 0})
    lists = [name for name in redis.scan_iter(match=f"{fast.default_queue}*") if redis.type(name) == "list"]
    assert waiting_messages(redis, fast.default_queue) == 1
    redis.delete(*lists)
    # when a worker runs on that queue
    worker = start_worker(fast, tmp_path, "w", redis)
    try:
        # then the sweep finds the job unclaimed past its deadline and republishes it: it runs once
        doc = wait_for_state(client, TENANT, job_id, {"succeeded", "dead"}, timeout=30)
    finally:
        worker.stop()
    assert doc["state"] == "succeeded"
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1]
    assert_invariants(redis)


@pytest.mark.slow
def test_an_api_killed_between_the_record_and_the_publish_loses_nothing(
    fast: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given an API process whose broker (not the job store's Redis) hangs
    with stalled_server() as stalled, api_process(fast, f"redis://127.0.0.1:{stalled}/0", tmp_path) as port:
        # when a delayed job is submitted (with such a broker the API publishes nothing: the job
        # is parked in Redis without a message, for a worker to publish when due) and the API
        # is SIGKILLed once the record is written
        key = store_key(TENANT, "killed-api-1")
        body = {
            "jobType": "witness.sleep",
            "payload": {"seconds": 0},
            "idempotencyKey": "killed-api-1",
            "options": {"delaySeconds": 1},
        }
        kill_while_publishing(port, "/v1/jobs", body, lambda: redis.exists(key))
    job_id = str(redis.get(key)).split(" ")[1]
    assert redis.hget(keys.job(job_id), "state") == "scheduled"
    # then a worker on the real broker runs it, once (a worker on the job store's Redis cannot
    # publish a job parked in another broker's form: the sweep publishes it when due)
    worker = start_worker(fast, tmp_path, "w", redis)
    try:
        doc = wait_for_state(create_app(fast).test_client(), TENANT, job_id, {"succeeded", "dead"}, timeout=30)
    finally:
        worker.stop()
    assert doc["state"] == "succeeded"
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1]
    assert_invariants(redis)


@pytest.mark.slow
def test_a_replay_cut_off_before_its_publish_still_runs(fast: Settings, redis: Redis, tmp_path: Path) -> None:
    # given a dead job (diag.fail with no retries)
    client = create_app(fast).test_client()
    worker = start_worker(fast, tmp_path, "w1", redis)
    try:
        job_id = submit(client, "diag.fail", {}, options={"maxRetries": 0})
        assert wait_for_state(client, TENANT, job_id, {"dead"}, timeout=30)["attempts"] == 1
    finally:
        worker.stop()
    # when it is replayed through an API whose broker hangs, and the API is SIGKILLed
    # once the record says queued
    with stalled_server() as stalled, api_process(fast, f"redis://127.0.0.1:{stalled}/0", tmp_path) as port:
        queued = lambda: redis.hget(keys.job(job_id), "state") == "queued"  # noqa: E731
        kill_while_publishing(port, f"/v1/dead-letters/{job_id}/replay", None, queued)
    # then a worker runs its new cycle anyway, and it ends dead again (it always fails)
    worker = start_worker(fast, tmp_path, "w2", redis)
    try:
        wait_for(
            lambda: redis.hget(keys.job(job_id), "cycle") == "1" and redis.hget(keys.job(job_id), "state") == "dead",
            timeout=30,
        )
    finally:
        worker.stop()
    doc = client.get(f"/v1/jobs/{job_id}", headers=HEADERS).get_json()
    assert (doc["state"], doc["attempts"], doc["replays"]) == ("dead", 1, 1)
    assert_invariants(redis)


@pytest.mark.slow
def test_a_cancelled_job_whose_worker_dies_ends_cancelled_and_never_runs_again(
    fast: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a long job running, asked to cancel (the handler does not check for it)
    client = create_app(fast).test_client()
    worker = start_worker(fast, tmp_path, "w1", redis)
    try:
        job_id = submit(client, "witness.sleep", {"seconds": 30})
        wait_for(lambda: witness_starts(redis, job_id), timeout=20)
        response = client.post(f"/v1/jobs/{job_id}/cancel", headers=HEADERS)
        assert response.get_json()["state"] == "running"
        # when its worker is SIGKILLed with the job still running, and another starts
        worker.kill_group()
    finally:
        worker.stop()
    worker = start_worker(fast, tmp_path, "w2", redis)
    try:
        # then once the lease lapses the job ends cancelled, and no attempt starts again
        doc = wait_for_state(client, TENANT, job_id, {"cancelled", "succeeded", "dead"}, timeout=30)
    finally:
        worker.stop()
    assert doc["state"] == "cancelled"
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1]
    assert_invariants(redis)


def overdue_jobs(redis: Redis, store: JobStore, queue: str, n: int) -> list[str]:
    """``n`` retrying jobs of the recovery tenant whose due time passed a minute ago."""
    ids = [new_job_id() for _ in range(n)]
    past = time.time() - 60
    for job_id in ids:
        job = Job(
            job_id=job_id,
            tenant_id=TENANT,
            job_type="witness.sleep",
            queue=queue,
            created_at=utc_now(),
            state=JobState.RETRYING,
            due_at=past,
        )
        store.create(job, watch_at=past)
    return ids


def finish(redis: Redis, store: JobStore, ids: list[str]) -> None:
    for job_id in ids:
        store.finalize(store.get(job_id), JobState.CANCELLED, from_="waiting")  # type: ignore[arg-type]


def test_one_sweep_republishes_every_overdue_job_then_backs_off(own_redis: Redis) -> None:
    # given 1,000 jobs overdue at once (a dead host's, or due at the same instant)
    redis = own_redis
    store = JobStore(redis)
    queue = "t-sweep-scale"
    ids = overdue_jobs(redis, store, queue, 1000)
    sent: list[str] = []

    def publish(jobs: list[Job]) -> int:
        sent.extend(job.job_id for job in jobs)
        return len(jobs)

    recheck = RecheckPolicy(lapsed=10.0, queued=60.0)
    try:
        # when one sweep runs
        before = float(redis.time()[0])
        count = sweep(redis, store, publish, waiting_lists=lambda q, t, p: [], recheck=recheck, budget_seconds=30)
        # then it republished all of them, each once
        assert count == 1000 and sorted(sent) == sorted(ids)
        # and each is looked at again a recheck later, so a second sweep now sends nothing
        scores = [redis.zscore(keys.WATCH, job_id) for job_id in ids]
        assert all(s is not None and before + 9 <= s <= before + 12 for s in scores)
        assert sweep(redis, store, publish, waiting_lists=lambda q, t, p: [], recheck=recheck, budget_seconds=30) == 0
        # and when they are overdue again (that copy was lost too), the next look is twice as far
        redis.zadd(keys.WATCH, dict.fromkeys(ids, before - 1))
        assert (
            sweep(redis, store, publish, waiting_lists=lambda q, t, p: [], recheck=recheck, budget_seconds=30) == 1000
        )
        assert all(before + 19 <= redis.zscore(keys.WATCH, j) <= before + 23 for j in ids[:10])  # type: ignore[operator]
    finally:
        finish(redis, store, ids)
    assert backlog_mismatches(redis) == {}
    assert unowned_keys(redis) == []


@pytest.mark.parametrize(
    "state, overdue_by, recheck",
    [
        # a queued job overdue while its queue still holds a message (its own may be behind it)
        (JobState.QUEUED, 1, RecheckPolicy(lapsed=10.0, queued=0.0, lane_waits=2)),
        # a delayed job whose due time passed more than a lease ago, its message released from
        # parking onto its queue, still behind others (50,000 jobs due at one instant, say)
        (JobState.SCHEDULED, 60, RecheckPolicy(lapsed=0.0, queued=0.0, lane_waits=2)),
    ],
    ids=["queued", "released-delayed"],
)
def test_a_job_behind_others_on_its_queue_waits_before_it_is_republished(
    settings: Settings, own_redis: Redis, state: JobState, overdue_by: float, recheck: RecheckPolicy
) -> None:
    # given a job overdue while its queue's list still holds a message, its own pushed there
    redis = own_redis
    store = JobStore(redis)
    queue = f"t-sweep-behind-{state.value}"
    app = create_celery(settings)
    due = time.time() - overdue_by
    delayed = state is JobState.SCHEDULED
    job = Job(
        job_id=new_job_id(),
        tenant_id=TENANT,
        job_type="witness.sleep",
        queue=queue,
        created_at=utc_now(),
        state=state,
        due_at=due if delayed else None,
    )
    store.create(job, watch_at=due + 30 if delayed else due)
    message, lane_list = encode_message(app, job)
    redis.lpush(lane_list, message)
    sent: list[str] = []

    def publish(jobs: list[Job]) -> int:
        sent.extend(j.job_id for j in jobs)
        return len(jobs)

    try:
        # when the sweep looks at it three times
        outcomes = [
            sweep(
                redis,
                store,
                publish,
                waiting_lists=lambda q, t, p: [keys.ready(q, t), keys.PARKED_MESSAGES, lane_list],
                recheck=recheck,
                budget_seconds=5,
            )
            for _ in range(3)
        ]
        # then it waits two checks (the queue is busy: no copy of every such job), and is
        # republished on the third
        assert outcomes == [0, 0, 1] and sent == [job.job_id]
    finally:
        redis.delete(lane_list)
        finish(redis, store, [job.job_id])
    assert backlog_mismatches(redis) == {}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_pool_without_time_limits_cannot_keep_a_hung_job_running(
    fast: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a threads pool (Celery enforces no time limit there) and a job that hangs far
    # past its 1 s timeout, with no retries
    client = create_app(fast).test_client()
    env = {**settings_env(fast), **WORKER_ENV}
    worker = WorkerProcess(env, tmp_path / "w.log", queues=[fast.default_queue], pool="threads", concurrency=2)
    worker.start().wait_ready(redis, ("witness.sleep",))
    try:
        job_id = submit(client, "witness.sleep", {"seconds": 45}, options={"maxRetries": 0, "timeoutSeconds": 1})
        wait_for(lambda: witness_starts(redis, job_id), timeout=20)
        # when its hard time limit (1 s + 10 s grace) and a lease have passed
        # then the worker stops renewing its lease, the lease lapses, and the job ends dead
        # long before the handler would have returned
        doc = wait_for_state(client, TENANT, job_id, {"dead", "succeeded"}, timeout=35)
    finally:
        worker.stop()
    assert doc["state"] == "dead"
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1]
