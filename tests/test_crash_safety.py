"""Faults injected for real: SIGKILL, SIGTERM, duplicate messages, poison input, cancel, delay."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys
from pulse_core.broker.celery_app import WORKER_ENV, create_celery, publish_job
from pulse_core.jobs import Job, new_job_id, new_trace_id, utc_now
from pulse_core.lua_scripts import source
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from tests.faults import RedisProxy
from tests.support import (
    WorkerProcess,
    auth,
    settings_env,
    wait_for,
    wait_for_state,
    waiting_messages,
    witness_starts,
)

WITNESS = ("witness.sleep",)


def submit(client: FlaskClient, job_type: str, payload: dict, **extra: object) -> str:
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload, **extra}, headers=auth("acme"))
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["jobId"])


def worker_on(settings: Settings, tmp_path: Path, name: str, **kwargs: object) -> WorkerProcess:
    env = {**settings_env(settings), **WORKER_ENV}
    return WorkerProcess(env, tmp_path / f"{name}.log", queues=[settings.default_queue], **kwargs)  # type: ignore[arg-type]


def state_of(client: FlaskClient, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()["state"])


def assert_one_start_per_attempt(redis: Redis, job_id: str) -> list[dict]:
    seen = witness_starts(redis, job_id)
    counts = Counter(s["attempt"] for s in seen)
    assert all(n == 1 for n in counts.values()), (job_id, seen)
    return seen


@pytest.mark.slow
def test_sigkill_of_the_whole_worker_loses_nothing_and_runs_no_attempt_twice(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker running N sleeps that outlast it
    client = create_app(isolated_settings).test_client()
    first = worker_on(isolated_settings, tmp_path, "first", concurrency=3).start()
    second: WorkerProcess | None = None
    try:
        first.wait_ready(redis, WITNESS)
        ids = [submit(client, "witness.sleep", {"seconds": 3}) for _ in range(3)]
        wait_for(lambda: all(witness_starts(redis, j) for j in ids), timeout=30)
        # when the worker and its pool are SIGKILLed mid-job, and a new worker starts
        first.kill_group()
        killed_at = time.monotonic()
        second = worker_on(isolated_settings, tmp_path, "second", concurrency=3).start()
        # then every job succeeds, promptly (lease 2 s + sweep, not the 1-hour visibility timeout)
        for job_id in ids:
            doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=60)
            assert doc["state"] == "succeeded"
            # the crashed attempt counts; the handler started once per attempt
            assert doc["attempts"] == 2
            assert [s["attempt"] for s in assert_one_start_per_attempt(redis, job_id)] == [1, 2]
        assert time.monotonic() - killed_at < 45
    finally:
        first.stop()
        if second:
            second.stop()


@pytest.mark.slow
def test_sigkill_of_a_pool_child_reruns_its_job_and_a_long_job_is_never_started_twice(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker running a short sleep and a sleep that outlasts several lease periods
    client = create_app(isolated_settings).test_client()
    worker = worker_on(isolated_settings, tmp_path, "w", concurrency=2).start()
    try:
        worker.wait_ready(redis, WITNESS)
        victim = submit(client, "witness.sleep", {"seconds": 3})
        long_job = submit(client, "witness.sleep", {"seconds": 7})
        wait_for(lambda: witness_starts(redis, victim) and witness_starts(redis, long_job))
        # when the pool child running the victim is SIGKILLed
        os.kill(witness_starts(redis, victim)[0]["pid"], signal.SIGKILL)
        # then the victim runs again and succeeds, with its crashed attempt counted
        doc = wait_for_state(client, "acme", victim, {"succeeded", "dead"}, timeout=60)
        assert doc["state"] == "succeeded" and doc["attempts"] == 2
        assert [s["attempt"] for s in assert_one_start_per_attempt(redis, victim)] == [1, 2]
        # and the long job, whose worker lived, ran once although its lease was renewed
        doc = wait_for_state(client, "acme", long_job, {"succeeded", "dead"}, timeout=60)
        assert doc["state"] == "succeeded" and doc["attempts"] == 1
        assert len(witness_starts(redis, long_job)) == 1
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_job_that_always_kills_its_worker_ends_dead(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a handler that SIGKILLs its own pool process, allowed one retry
    client = create_app(isolated_settings).test_client()
    worker = worker_on(isolated_settings, tmp_path, "w", concurrency=1).start()
    try:
        worker.wait_ready(redis, ["witness.crash"])
        job_id = submit(client, "witness.crash", {}, options={"maxRetries": 1})
        # when it runs, then it ends dead after exactly 2 attempts, not in an endless loop
        doc = wait_for_state(client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
        assert doc["attempts"] == 2
        assert doc["error"]["type"] == "WorkerLost"
        assert [s["attempt"] for s in assert_one_start_per_attempt(redis, job_id)] == [1, 2]
        assert redis.zscore(keys.tenant_dead_letters("acme"), job_id) is not None
    finally:
        worker.stop()


@pytest.mark.slow
def test_sigterm_lets_the_running_job_finish_and_leaves_the_rest_queued(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker running a 2-second sleep, with more jobs queued behind it
    settings = replace(isolated_settings, soft_shutdown_seconds=4.0)
    client = create_app(settings).test_client()
    worker = worker_on(settings, tmp_path, "first", concurrency=1).start()
    second: WorkerProcess | None = None
    try:
        worker.wait_ready(redis, WITNESS)
        running = submit(client, "witness.sleep", {"seconds": 2})
        wait_for(lambda: witness_starts(redis, running))
        queued = [submit(client, "diag.echo", {"n": n}) for n in range(3)]
        # when the worker gets SIGTERM
        worker.signal(signal.SIGTERM)
        assert worker.process is not None
        # then it exits once the running job is done
        assert worker.process.wait(30) == 0
        assert state_of(client, running) == "succeeded"
        # and the queued jobs stayed queued, their messages back on the queue
        assert [state_of(client, j) for j in queued] == ["queued"] * 3
        assert waiting_messages(redis, settings.default_queue) == 3
        # when the next worker starts, then it runs them
        second = worker_on(settings, tmp_path, "second", concurrency=1).start()
        for job_id in queued:
            assert wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=60)
        assert len(witness_starts(redis, running)) == 1
    finally:
        worker.stop()
        if second:
            second.stop()


def held_reserved_job(
    settings: Settings, redis: Redis, tmp_path: Path, name: str, *, check_in: float
) -> tuple[WorkerProcess, Job]:
    """A worker holding a message it reserved and has not started: an ETA message two minutes
    out (as a stock Celery client sends one), which the worker keeps until due. The job's
    watch deadline is ``check_in`` seconds away."""
    worker = worker_on(settings, tmp_path, name, concurrency=1).start()
    worker.wait_ready(redis, WITNESS)
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="diag.echo",
        queue=settings.default_queue,
        payload={},
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    JobStore(redis).create(job, watch_at=time.time() + check_in)
    publish_job(create_celery(settings), job, countdown=120)
    wait_for(lambda: waiting_messages(redis, settings.default_queue) == 0, timeout=20)
    return worker, job


@pytest.mark.slow
def test_sigterm_puts_a_reserved_unstarted_message_back_from_the_workers_memory(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker holding a reserved, unstarted message (Pulse's transport keeps it in
    # memory only: nothing in kombu's unacked hash)
    settings = replace(isolated_settings, soft_shutdown_seconds=2.0)
    worker, job = held_reserved_job(settings, redis, tmp_path, "w", check_in=3600)
    try:
        assert not [raw for raw in redis.hvals("unacked") if job.job_id in raw]
        # when the worker gets SIGTERM
        worker.signal(signal.SIGTERM)
        assert worker.process is not None
        # then it exits, and the message is back on its queue, its job still queued
        assert worker.process.wait(30) == 0
        assert waiting_messages(redis, settings.default_queue) == 1
        assert redis.hget(keys.job(job.job_id), "state") == "queued"
    finally:
        worker.stop()
        JobStore(redis).cancel("acme", job.job_id)


@pytest.mark.slow
def test_a_reserved_message_that_dies_with_its_worker_is_republished_by_the_sweep(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker holding a reserved, unstarted message, and a short queued check
    settings = replace(isolated_settings, queued_check_seconds=1.0)
    check_in = 6.0
    first, job = held_reserved_job(settings, redis, tmp_path, "first", check_in=check_in)
    second: WorkerProcess | None = None
    try:
        # when the worker is SIGKILLed: the message is gone with it (no copy in Redis)
        first.kill_group()
        killed_at = time.monotonic()
        assert waiting_messages(redis, settings.default_queue) == 0
        assert not [raw for raw in redis.hvals("unacked") if job.job_id in raw]
        second = worker_on(settings, tmp_path, "second", concurrency=1).start()
        # then a sweep (any worker's on this Redis) republishes it once its check is due, and
        # it runs, once: its only message died with the first worker
        wait_for(lambda: redis.hget(keys.job(job.job_id), "state") == "succeeded", timeout=60, interval=0.1)
        assert time.monotonic() - killed_at < check_in + 20
        assert redis.hget(keys.job(job.job_id), "attempts") == "1"
    finally:
        first.stop()
        if second:
            second.stop()
        JobStore(redis).cancel("acme", job.job_id)


def test_the_same_message_published_twice_runs_the_handler_once(
    live_client: FlaskClient, settings: Settings, redis: Redis
) -> None:
    # given a stored job, and its message published twice (a redelivery, a lost ack)
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="witness.sleep",
        queue=settings.default_queue,
        payload={"seconds": 0.5},
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    JobStore(redis).create(job)
    app = create_celery(settings)
    publish_job(app, job)
    publish_job(app, job)
    # when the worker has taken both
    doc = wait_for_state(live_client, "acme", job.job_id, {"succeeded", "dead"}, timeout=30)
    time.sleep(1.0)  # the second copy arrives while the first runs, or after
    # then the handler ran once and the job succeeded on attempt 1
    assert doc["state"] == "succeeded" and doc["attempts"] == 1
    assert len(witness_starts(redis, job.job_id)) == 1


def test_a_cancelled_job_never_runs_and_a_delayed_job_waits(live_client: FlaskClient, redis: Redis) -> None:
    # given two jobs delayed by 2 seconds
    submitted = time.time()
    delayed = submit(live_client, "witness.sleep", {"seconds": 0}, options={"delaySeconds": 2})
    doomed = submit(live_client, "witness.sleep", {"seconds": 0}, options={"delaySeconds": 2})
    doc = live_client.get(f"/v1/jobs/{delayed}", headers=auth("acme")).get_json()
    assert doc["state"] == "scheduled" and doc["runAt"]
    # when one is cancelled before it starts
    response = live_client.post(f"/v1/jobs/{doomed}/cancel", headers=auth("acme"))
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    # then its parked message goes with it (it would otherwise wait, payload and all, until due)
    assert redis.zscore(keys.PARKED_UNTIL, doomed) is None
    assert not redis.hexists(keys.PARKED_MESSAGES, doomed)
    assert redis.zscore(keys.PARKED_UNTIL, delayed) is not None
    # and the other starts no earlier than its time and succeeds
    wait_for_state(live_client, "acme", delayed, {"succeeded"}, timeout=30)
    assert witness_starts(redis, delayed)[0]["t"] >= submitted + 2
    # and the cancelled one never runs, and cannot be cancelled again
    time.sleep(1.0)
    assert state_of(live_client, doomed) == "cancelled"
    assert witness_starts(redis, doomed) == []
    again = live_client.post(f"/v1/jobs/{doomed}/cancel", headers=auth("acme"))
    assert again.status_code == 409
    other = live_client.post(f"/v1/jobs/{delayed}/cancel", headers=auth("globex"))
    assert other.status_code == 404


def test_a_running_job_is_cancelled_cooperatively(live_client: FlaskClient, redis: Redis) -> None:
    # given a running handler that checks ctx.cancel_requested()
    job_id = submit(live_client, "witness.cooperative", {"seconds": 30})
    wait_for(lambda: witness_starts(redis, job_id))
    # when it is cancelled
    response = live_client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
    assert response.status_code == 200
    assert response.get_json()["cancelRequested"] is True
    # then the handler stops and the job ends cancelled, not retried
    doc = wait_for_state(live_client, "acme", job_id, {"cancelled", "succeeded", "dead"})
    assert doc["state"] == "cancelled" and doc["attempts"] == 1


@pytest.mark.parametrize(
    ("script", "options"),
    [("schedule_retry", {}), ("mark_dead_letter", {"maxRetries": 0})],
    ids=["a retry", "its last attempt's dead letter"],
)
def test_a_cancel_asked_while_a_failed_attempts_outcome_is_being_recorded_ends_the_job_cancelled(
    isolated_settings: Settings, redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, script: str, options: dict
) -> None:
    # given a worker whose link to Redis is slow one time: the script that records a failed
    # attempt's outcome (a retry, or the last attempt's dead letter) reaches Redis 2 s late
    proxy = RedisProxy(redis_server.port)
    through = f"{proxy.url.rsplit('/', 1)[0]}/{isolated_settings.redis_url.rsplit('/', 1)[1]}"
    worker = worker_on(
        replace(isolated_settings, redis_url=through, broker_url=through), tmp_path, "slow", concurrency=1
    )
    client = create_app(isolated_settings).test_client()
    try:
        worker.start().wait_ready(redis, ["witness.flaky"])
        proxy.delay(hashlib.sha1(source("pulse_core.store", script).encode()).hexdigest(), 2.0)
        # when a job whose first attempt fails runs there
        job_id = submit(client, "witness.flaky", {"failTimes": 1}, options=options)
        # and its tenant asks to cancel it while that failure is on its way to Redis (it still
        # runs, so the cancel is cooperative)
        assert wait_for(lambda: proxy.delays_left() == 0, timeout=30)
        asked = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        assert asked.status_code == 200 and asked.get_json()["cancelRequested"] is True
        # then it ends cancelled, as the cancel said a failed attempt would: never retried,
        # nor filed as a dead letter
        doc = wait_for_state(client, "acme", job_id, {"cancelled", "succeeded", "dead"}, timeout=30)
        time.sleep(1.5)  # past the retry's backoff (0.4 to 0.8 s)
        assert (doc["state"], state_of(client, job_id)) == ("cancelled", "cancelled")
        assert [start["attempt"] for start in witness_starts(redis, job_id)] == [1]
        assert redis.zscore(keys.tenant_dead_letters("acme"), job_id) is None
    finally:
        worker.stop()
        proxy.close()


def test_poison_messages_are_dropped_or_dead_lettered_and_the_worker_carries_on(
    live_client: FlaskClient, settings: Settings, redis: Redis
) -> None:
    # given an undecodable message, a message for a job with no record, and a job whose
    # jobType no worker has
    queue = settings.default_queue
    redis.lpush(queue, b"\xff\xfe not json at all")
    app = create_celery(settings)
    ghost = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="diag.echo",
        queue=queue,
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    publish_job(app, ghost)
    orphan = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="retired.type",
        queue=queue,
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    JobStore(redis).create(orphan)
    publish_job(app, orphan)
    # when the worker meets them, then the unrunnable job is dead-lettered with its reason
    doc = wait_for_state(live_client, "acme", orphan.job_id, {"dead", "succeeded"}, timeout=30)
    assert doc["error"]["type"] == "UnknownJobTypeAtWorker"
    assert redis.zscore(keys.tenant_dead_letters("acme"), orphan.job_id) is not None
    # and the worker still runs jobs, and no record appeared for the ghost
    ok = submit(live_client, "diag.echo", {"still": "alive"})
    assert wait_for_state(live_client, "acme", ok, {"succeeded"})["result"] == {"still": "alive"}
    assert not redis.exists(keys.job(ghost.job_id))


def test_a_visibility_timeout_shorter_than_the_longest_job_stops_the_worker(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    # given a broker visibility timeout shorter than the timeout cap plus the ETA window
    settings = replace(isolated_settings, visibility_timeout_seconds=120)
    worker = worker_on(settings, tmp_path, "w", concurrency=1).start()
    # when the worker starts, then it refuses, naming the setting and what it must exceed
    assert worker.process is not None
    code = worker.process.wait(60)
    worker.stop()
    assert code != 0
    assert "PULSE_VISIBILITY_TIMEOUT_SECONDS=120 is too short" in worker.log()
