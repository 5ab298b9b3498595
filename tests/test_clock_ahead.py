"""A host whose clock runs ahead of the others: what Pulse times by a clock, it times by Redis'.

Leases are timed by Redis' clock (``pulse_core.redis_client.redis_clock``: Redis' ``TIME`` as
last measured, plus the time since on a clock no one sets), so everything compared with them,
or shared between hosts, must be too: a worker's clock an hour off, or stepped by an hour
between two measures, must not let it take a running job's live lease, nor may a measure whose
round trip was slow one way (``redis_clock_earliest``); a worker an hour ahead must neither take a
running job's run slot nor drop the jobTypes other workers announced, and neither an API nor
a worker an hour ahead may put a job's due time (a delayed start, a retry) an hour late.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys, redis_client
from pulse_core.guards.execution_limits import ExecutionGate
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.policy import ExecutionLimits
from pulse_core.redis_client import connect, redis_now, server_time
from pulse_core.settings import Settings
from pulse_core.store.job_store import ClaimRefusal, JobStore
from pulse_core.store.job_types import LiveJobTypesCollector, announce, live_job_types
from tests.faults import RedisProxy
from tests.invariants import backlog_mismatches
from tests.support import WorkerProcess, auth, settings_env, wait_for_state, witness_key

HOUR = 3600.0


@pytest.fixture
def own_db(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """A database of this module's own: announcements are global keys the workers share."""
    redis: Redis = connect(redis_server.url.rsplit("/", 1)[0] + "/12")
    redis.flushdb()
    yield redis
    redis.flushdb()


def test_a_worker_whose_clock_runs_ahead_cannot_take_a_running_jobs_slot(redis: Redis) -> None:
    # given a jobType limited to one at a time, whose one slot a job took and still holds while
    # it runs under a live lease (timed by Redis' clock, as the claim writes it), its short
    # grace over
    job_type = f"t.clock-{uuid.uuid4().hex[:8]}"
    limits = ExecutionLimits(max_concurrency=1)
    gate = ExecutionGate(redis, grace_seconds=0.05)
    first, second = f"t-clock-{uuid.uuid4().hex}", f"t-clock-{uuid.uuid4().hex}"
    held = gate.enter(first, job_type, None, limits, None)
    assert held.holder is not None
    redis.hset(keys.job(first), mapping={"state": "running", "leaseUntil": repr(server_time(redis) + 60)})
    time.sleep(0.1)
    slot = keys.concurrency(job_type, None)
    try:
        # when a worker whose clock runs an hour ahead asks the gate for the next job
        real = time.time
        with pytest.MonkeyPatch.context() as ahead:
            ahead.setattr(time, "time", lambda: real() + HOUR)
            verdict = gate.enter(second, job_type, None, limits, None)
        # then it is held back: the running job keeps its slot, the only holder of it
        assert verdict.holder is None and verdict.reason == "concurrency"
        assert redis.zrange(slot, 0, -1) == [held.holder]
        # and once the first job gives its slot back, the second takes it
        gate.leave(held)
        assert gate.enter(second, job_type, None, limits, None).holder is not None
    finally:
        redis.delete(slot, keys.job(first))


#: The tenant of the jobs these tests run and end by hand (its own: its backlog count is checked).
TENANT = "clock"


def _running(store: JobStore, lease_seconds: float = 60) -> str:
    """A job whose attempt runs under a live lease (a minute), claimed by a worker ``w1``."""
    job = Job(job_id=new_job_id(), tenant_id=TENANT, job_type="diag.echo", queue="t-clock", created_at=utc_now())
    store.create(job)
    claimed = store.claim(job.job_id, owner="w1/t1", lease_seconds=lease_seconds, fallback_max_retries=3, lost_error={})
    assert claimed.job is not None and claimed.refused is None
    return job.job_id


def _end(redis: Redis, job_id: str) -> None:
    """End a job ``_running`` made (cancelled, as it stands: running, or queued again by the
    recovery sweep once its lease lapsed), so its tenant's backlog count stays exact."""
    store = JobStore(redis)
    job = store.get(job_id)
    assert job is not None
    assert store.finalize(job, JobState.CANCELLED, from_="attempt" if job.state is JobState.RUNNING else "waiting")


@pytest.mark.parametrize("step", ["before its first measure", "between two measures"])
def test_a_worker_whose_clock_runs_ahead_cannot_take_a_running_jobs_live_lease(
    settings: Settings, redis: Redis, step: str
) -> None:
    # given a job running under a live lease of a minute, claimed by a worker with a right clock
    job_id = _running(JobStore(redis))
    # and another worker's process (its own client) whose host clock runs an hour ahead, set so
    # before it first measured Redis' clock, or stepped there after it had
    real = time.time
    other = JobStore(connect(settings.redis_url))
    try:
        with pytest.MonkeyPatch.context() as ahead:
            if step == "between two measures":
                other.now()  # measured while its clock was right
            ahead.setattr(time, "time", lambda: real() + HOUR)
            # when that worker gets a copy of the job's message and tries to claim it
            outcome = other.claim(job_id, owner="w2/t9", lease_seconds=60, fallback_max_retries=3, lost_error={})
            # then the lease is live by Redis' clock, and by this process' reading of it
            seen = other.now()
        assert outcome.refused is ClaimRefusal.BUSY and outcome.job is None
        assert redis.hget(keys.job(job_id), "owner") == "w1/t1"
        assert seen == pytest.approx(server_time(redis), abs=1)
    finally:
        _end(redis, job_id)
    # and the tenant's backlog count agrees with its records
    assert TENANT not in backlog_mismatches(redis)


def test_redis_clock_as_a_process_reads_it_does_not_move_with_its_host_clock(settings: Settings) -> None:
    # given a process that measured Redis' clock
    client = connect(settings.redis_url)
    before = redis_now(client)
    # when its host clock is stepped an hour ahead, then an hour behind
    real = time.time
    with pytest.MonkeyPatch.context() as stepped:
        stepped.setattr(time, "time", lambda: real() + HOUR)
        ahead = redis_now(client)
        stepped.setattr(time, "time", lambda: real() - HOUR)
        behind = redis_now(client)
    # then its reading of Redis' clock moved on by the time that passed, not by either step
    assert 0 <= ahead - before < 1 and 0 <= behind - ahead < 1
    assert behind == pytest.approx(server_time(client), abs=1)


@pytest.mark.parametrize("step", ["claims a copy of its message", "ends it as an orphan"])
def test_a_worker_whose_measure_of_redis_clock_was_slow_one_way_cannot_take_a_live_lease(
    settings: Settings, redis: Redis, redis_server: EmbeddedRedis, step: str
) -> None:
    # given a worker's process whose last measure of Redis' clock went slowly one way: its TIME
    # reached Redis 4 s late (a link that stalled, a Redis busy with something else for a
    # while), its answer came back at once
    proxy = RedisProxy(redis_server.port)
    other = JobStore(connect(proxy.url.rsplit("/", 1)[0] + "/" + settings.redis_url.rsplit("/", 1)[1]))
    try:
        proxy.delay("TIME", 4.0)
        other.now()
        # and a job whose attempt runs under a live lease, its last renewal a second from its
        # end by Redis' clock (claimed by another worker, whose own measure was quick)
        job_id = _running(JobStore(redis), lease_seconds=1.5)
        running = JobStore(redis).get(job_id)
        assert running is not None
        assert float(redis.hget(keys.job(job_id), "leaseUntil") or 0) > server_time(redis)
        try:
            # when that worker gets a copy of the job's message and claims it, or ends the job
            # as an orphan whose lease lapsed (what it does after a claim found it exhausted)
            if step == "claims a copy of its message":
                outcome = other.claim(job_id, owner="w2/t9", lease_seconds=60, fallback_max_retries=3, lost_error={})
                taken = outcome.refused is None
            else:
                taken = other.finalize(running, JobState.DEAD, from_="orphan")
            # then the lease is live by Redis' clock: the running attempt keeps it
            assert not taken
            assert redis.hget(keys.job(job_id), "owner") == "w1/t1"
            assert redis.hget(keys.job(job_id), "state") == "running"
        finally:
            _end(redis, job_id)
    finally:
        proxy.close()
    # and the tenant's backlog count agrees with its records
    assert TENANT not in backlog_mismatches(redis)


def test_a_pool_process_forked_while_a_thread_reads_the_clock_reads_it_too(settings: Settings) -> None:
    # given a worker process one of whose threads holds the clocks' lock (it looks one up) at
    # the instant the process forks a pool process, which gets a copy of the lock, held
    client = connect(settings.redis_url)
    redis_now(client)
    with redis_client._clocks_lock:
        pid = os.fork()
        if pid == 0:  # the pool process
            # when it reads Redis' clock for its first claim
            try:
                now = redis_now(connect(settings.redis_url))
                os._exit(0 if abs(now - server_time(client)) < 1 else 1)
            finally:
                os._exit(2)
    # then it reads it at once, and right, instead of waiting for ever on the copied lock
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked process hung on the clocks' lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_worker_whose_clock_runs_ahead_keeps_the_others_job_types_live(
    own_db: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker with a right clock announced mail.send for a minute
    announce(own_db, ["mail.send"], ttl_seconds=60)
    # when a worker whose clock runs an hour ahead announces its own jobType
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + HOUR)
    announce(own_db, ["crm.sync"], ttl_seconds=60)
    # then the first announcement was not trimmed as lapsed, and this host reads both as live,
    # for the API's submit check and for the metric alike
    announced: list[str] = own_db.zrange(keys.JOB_TYPES, 0, -1)  # type: ignore[assignment]
    assert sorted(announced) == ["crm.sync", "mail.send"]
    assert live_job_types(own_db) == {"crm.sync", "mail.send"}
    gauge = {s.labels.get("job_type"): s.value for m in LiveJobTypesCollector(own_db).collect() for s in m.samples}
    assert gauge == {None: 1.0, "crm.sync": 1.0, "mail.send": 1.0}
    # and its announcement lapses a minute from now by Redis' clock, not an hour late
    assert own_db.zscore(keys.JOB_TYPES, "crm.sync") == pytest.approx(server_time(own_db) + 60, abs=5)


def test_an_api_whose_clock_runs_ahead_does_not_delay_a_delayed_job_by_its_skew(
    settings: Settings, redis: Redis, worker: WorkerProcess
) -> None:
    # given an API process whose clock runs an hour ahead of Redis' (and of the worker's)
    real = time.time
    with pytest.MonkeyPatch.context() as ahead:
        ahead.setattr(time, "time", lambda: real() + HOUR)
        client = create_app(settings).test_client()
        # when it accepts a job to run in one second
        answer = client.post(
            "/v1/jobs",
            json={"jobType": "diag.echo", "payload": {"n": 1}, "options": {"delaySeconds": 1}},
            headers=auth("acme"),
        )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job_id = answer.get_json()["jobId"]
    # then the job runs a second later by Redis' clock, not an hour and a second later
    doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=15)
    assert (doc["state"], doc["attempts"]) == ("succeeded", 1)


def test_a_worker_whose_clock_runs_ahead_retries_after_the_backoff_not_the_skew(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given the only worker of a queue, whose clock runs an hour ahead (tests/handlers/clock_ahead.py)
    modules = ",".join([*isolated_settings.handler_modules, "clock_ahead"])
    env = {**settings_env(isolated_settings), "PULSE_HANDLER_MODULES": modules}
    worker = WorkerProcess(env, tmp_path / "ahead.log", queues=[isolated_settings.default_queue]).start()
    client = create_app(isolated_settings).test_client()
    try:
        worker.wait_ready(redis, ["witness.flaky"])
        # when a job fails its first attempt (backoff 0.4 s) and succeeds on its second
        answer = client.post(
            "/v1/jobs", json={"jobType": "witness.flaky", "payload": {"failTimes": 1}}, headers=auth("acme")
        )
        assert answer.status_code == 202, answer.get_data(as_text=True)
        job_id = answer.get_json()["jobId"]
        doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=15)
    finally:
        worker.stop()
    # then the second attempt ran after the backoff by Redis' clock, not an hour later
    assert (doc["state"], doc["attempts"]) == ("succeeded", 2)
    starts = [json.loads(entry)["t"] for entry in redis.lrange(witness_key(job_id), 0, -1)]
    assert len(starts) == 2 and starts[1] - starts[0] < 10, starts


def _submit_from_an_api_an_hour_ahead(env: dict[str, str], body: dict) -> tuple[int, dict]:
    """In a spawned child: an API process whose host clock runs an hour ahead submits ``body``."""
    real = time.time
    time.time = lambda: real() + HOUR  # this process' clock only (a spawned child)
    response = create_app(Settings.from_env(env)).test_client().post("/v1/jobs", json=body, headers=auth("acme"))
    return response.status_code, response.get_json()


def test_a_job_submitted_to_an_api_whose_clock_runs_ahead_does_not_start_before_its_run_at(
    settings: Settings, redis: Redis, client: FlaskClient
) -> None:
    # given a live jobType and a runAt half an hour from now by Redis' clock
    announce(redis, ["diag.echo"], 60)
    run_at = datetime.fromtimestamp(server_time(redis) + HOUR / 2, UTC)
    body = {"jobType": "diag.echo", "payload": {}, "options": {"runAt": run_at.isoformat()}}
    # when an API process whose host clock runs an hour ahead accepts it
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        status, doc = pool.submit(_submit_from_an_api_an_hour_ahead, settings_env(settings), body).result(timeout=120)
    assert status == 202, doc
    try:
        # then the job waits scheduled for its runAt, as from any other API process
        assert doc["state"] == "scheduled", doc
        assert redis.hget(keys.job(doc["jobId"]), "state") == "scheduled"
    finally:
        client.post(f"/v1/jobs/{doc['jobId']}/cancel", headers=auth("acme"))
