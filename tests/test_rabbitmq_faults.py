"""Faults injected for real on the RabbitMQ path: a worker SIGKILLed or SIGTERMed while it holds
running and reserved messages, its TCP link to RabbitMQ stalled or broken mid-drain, a pool
process that kills itself, a job cancelled while its message waits on the broker, a tenant's many
jobs recovered at once beside another tenant's (fairness after a fault). After each:
every job answered 2xx ends final, no attempt's handler started twice, the backlog count is exact
(``tests.faults.assert_invariants``). The Redis-broker versions are in ``test_crash_safety``,
``test_recovery`` and ``test_shutdown_faults``.

Each test runs on a RabbitMQ queue of its own (deleted at the end) and a Redis of its own
(``own_redis``: no session worker sweeps or releases its jobs); skipped, with the reason, where
no RabbitMQ answers.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from celery import Celery
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import WORKER_ENV, create_celery, publish_job
from pulse_core.broker.queue_depth import ready_messages
from pulse_core.jobs import Job, new_job_id, new_trace_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_worker.shutdown import SHUTDOWN_MARGIN_SECONDS
from tests.amqp import AMQP_URL, amqp_url_via, delete_queue, needs_rabbitmq
from tests.faults import RedisProxy, assert_invariants, submit
from tests.support import WorkerProcess, auth, settings_env, wait_for, wait_for_state, witness_starts

pytestmark = needs_rabbitmq

WITNESS = ("witness.sleep", "witness.crash")
#: A queued job whose message is lost is republished this long after its deadline was set.
QUEUED_CHECK_SECONDS = 3.0
SOFT_SHUTDOWN_SECONDS = 6.0
#: A stall this long outlasts a worker's attempt to open a connection to RabbitMQ (about 10 s
#: with kombu's retries), so its broker calls fail meanwhile, not merely wait.
STALL_SECONDS = 12.0


@pytest.fixture
def rig(settings: Settings, own_redis: Redis) -> Iterator[Settings]:
    """Settings on a RabbitMQ queue of the test's own and a Redis of its own, with a short queued
    check (a lost message is found in seconds); the queue is deleted when the test ends."""
    found = own_redis.connection_pool.connection_kwargs
    local = replace(
        settings,
        redis_url=f"redis://{found['host']}:{found['port']}/0",
        broker_url=AMQP_URL,
        default_queue=f"t-amqp-fault-{uuid.uuid4().hex[:8]}",
        queued_check_seconds=QUEUED_CHECK_SECONDS,
        soft_shutdown_seconds=SOFT_SHUTDOWN_SECONDS,
    )
    yield local
    delete_queue(create_celery(local), local.default_queue)


def worker_on(settings: Settings, tmp_path: Path, name: str, *, broker_url: str | None = None) -> WorkerProcess:
    """A two-process worker on the settings' queue as ``pulse worker`` runs it (SIGTERM is the
    soft shutdown), reaching RabbitMQ at ``broker_url`` (default: directly)."""
    env = {**settings_env(replace(settings, broker_url=broker_url or settings.broker_url)), **WORKER_ENV}
    return WorkerProcess(env, tmp_path / f"{name}.log", queues=[settings.default_queue], concurrency=2)


def held_by(app: Celery, worker: WorkerProcess) -> list[str]:
    """The job ids of the ETA messages ``worker`` holds reserved, unstarted (a broadcast inspect)."""
    node = worker.command[worker.command.index("--hostname") + 1].split("@")[0]
    scheduled = app.control.inspect(timeout=1.0).scheduled() or {}
    return [
        str(entry["request"]["args"][0])
        for name, entries in scheduled.items()
        if name.startswith(node + "@")
        for entry in entries
    ]


def reserve_on(app: Celery, redis: Redis, settings: Settings, worker: WorkerProcess, *, check_in: float) -> str:
    """A queued job whose one message ``worker`` holds reserved and unstarted: an ETA message two
    minutes out (as a stock Celery client sends one), kept by the worker until due. The job's
    watch deadline is ``check_in`` seconds away. Its id."""
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="witness.sleep",
        queue=settings.default_queue,
        payload={"seconds": 0.1},
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    JobStore(redis).create(job, watch_at=time.time() + check_in)
    publish_job(app, job, countdown=120)
    wait_for(lambda: job.job_id in held_by(app, worker), timeout=30, interval=0.2)
    return job.job_id


def docs_of(client: FlaskClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {job_id: client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json() for job_id in ids}


def running_ids(redis: Redis, ids: list[str]) -> list[str]:
    return [job_id for job_id in ids if redis.hget(keys.job(job_id), "state") == "running"]


@pytest.mark.slow
def test_sigkill_of_the_whole_worker_holding_running_and_reserved_messages_loses_nothing_on_rabbitmq(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker on RabbitMQ running two sleeps that outlast it, holding a reserved unstarted
    # message, with more jobs waiting behind them
    app = create_celery(rig)
    client = create_app(rig).test_client()
    first = worker_on(rig, tmp_path, "first").start()
    second: WorkerProcess | None = None
    try:
        first.wait_ready(own_redis, WITNESS)
        held = reserve_on(app, own_redis, rig, first, check_in=QUEUED_CHECK_SECONDS)
        accepted = [submit(client, "witness.sleep", {"seconds": 3.0}) for _ in range(6)]
        wait_for(lambda: len(running_ids(own_redis, accepted)) == 2, timeout=30)
        crashed = running_ids(own_redis, accepted)
        # when the worker and its pool are SIGKILLed (RabbitMQ puts back every unacked message,
        # marked redelivered), and another worker starts
        first.kill_group()
        second = worker_on(rig, tmp_path, "second").start()
        # then every job ends final, no attempt's handler started twice, the backlog count is exact
        assert_invariants(own_redis, client, [*accepted, held], timeout=60)
        docs = docs_of(client, [*accepted, held])
        assert {d["state"] for d in docs.values()} == {"succeeded"}
        # and the two crashed attempts counted, once each: their jobs ran a second attempt, no third
        assert {j: docs[j]["attempts"] for j in crashed} == {j: 2 for j in crashed}
        assert {j: [s["attempt"] for s in witness_starts(own_redis, j)] for j in crashed} == {
            j: [1, 2] for j in crashed
        }
        assert all(d["attempts"] == 1 for j, d in docs.items() if j not in crashed)
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.slow
def test_sigterm_finishes_running_jobs_under_live_leases_and_gives_reserved_messages_back_on_rabbitmq(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker on RabbitMQ running two jobs that outlast their lease (2 s) and holding a
    # reserved unstarted message, and a second worker beside it whose sweep would take over any
    # attempt whose lease lapsed
    app = create_celery(rig)
    client = create_app(rig).test_client()
    first = worker_on(rig, tmp_path, "first").start()
    second: WorkerProcess | None = None
    try:
        first.wait_ready(own_redis, WITNESS)
        held = reserve_on(app, own_redis, rig, first, check_in=60.0)
        long_jobs = [submit(client, "witness.sleep", {"seconds": 4.0}) for _ in range(2)]
        wait_for(lambda: len(running_ids(own_redis, long_jobs)) == 2, timeout=30)
        second = worker_on(rig, tmp_path, "second").start()
        second.wait_ready(own_redis, WITNESS)
        short_jobs = [submit(client, "witness.sleep", {"seconds": 0.2}) for _ in range(4)]
        # when the first worker gets SIGTERM
        first.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # then it exits, cleanly, within its soft shutdown and the margin
        assert first.process is not None
        assert first.process.wait(SOFT_SHUTDOWN_SECONDS + SHUTDOWN_MARGIN_SECONDS + 5) == 0, first.log()[-3000:]
        assert time.monotonic() - signalled <= SOFT_SHUTDOWN_SECONDS + SHUTDOWN_MARGIN_SECONDS + 5
        # and its running jobs finished there, at their first attempt, each started once: their
        # leases were kept alive while they finished, so no sweep started them again
        docs = docs_of(client, long_jobs)
        assert {j: (d["state"], d["attempts"]) for j, d in docs.items()} == {j: ("succeeded", 1) for j in long_jobs}
        assert {j: len(witness_starts(own_redis, j)) for j in long_jobs} == {j: 1 for j in long_jobs}
        # and its reserved, unstarted message went back to the queue: the second worker holds it now
        # (its job's deadline is a minute away: no sweep sent a copy)
        wait_for(lambda: held in held_by(app, second), timeout=20, interval=0.2)
        assert own_redis.hget(keys.job(held), "state") == "queued"
        assert witness_starts(own_redis, held) == []
        # and the rest run on the second worker, nothing lost, no attempt run twice
        assert_invariants(own_redis, client, [*long_jobs, *short_jobs], timeout=60)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        JobStore(own_redis).cancel("acme", held)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_a_stalled_or_broken_link_to_rabbitmq_mid_drain_loses_nothing_and_runs_nothing_twice(
    rig: Settings, own_redis: Redis, tmp_path: Path, fault: str
) -> None:
    # given a worker whose link to RabbitMQ goes through a proxy, draining 10 one-second sleeps
    client = create_app(rig).test_client()
    proxy = RedisProxy(urlparse(AMQP_URL).port or 5672)
    worker = worker_on(rig, tmp_path, "w", broker_url=amqp_url_via(proxy.port)).start()
    try:
        worker.wait_ready(own_redis, WITNESS)
        accepted = [submit(client, "witness.sleep", {"seconds": 1.0}) for _ in range(10)]
        wait_for(lambda: own_redis.hget(keys.job(accepted[1]), "state") == "succeeded", timeout=30)
        wait_for(lambda: len(running_ids(own_redis, accepted)) == 2, timeout=30)
        running = running_ids(own_redis, accepted)
        # when the link stalls for 12 s (a partition: no answer, no reset; long enough for the
        # worker's broker calls to time out) or is broken (every open connection reset: RabbitMQ
        # puts the unacked messages back, marked redelivered)
        if fault == "stall":
            proxy.stall()
            time.sleep(STALL_SECONDS)
            proxy.resume()
        else:
            proxy.reset()
        whole_again = time.monotonic()
        # then every job ends final, no attempt's handler started twice, the backlog count exact,
        # within the documented bound once the link is whole: a lost message's queued check plus a
        # sweep, on top of the work left (8 s of sleeps on 2 processes)
        bound = QUEUED_CHECK_SECONDS + rig.sweep_interval_seconds + 4.0 + 10.0
        assert_invariants(own_redis, client, accepted, timeout=bound)
        assert time.monotonic() - whole_again <= bound
        # and the attempts running at the fault finished there: their redelivered copies started nothing
        docs = docs_of(client, accepted)
        assert {j: (docs[j]["state"], docs[j]["attempts"]) for j in running} == {j: ("succeeded", 1) for j in running}
        assert {d["state"] for d in docs.values()} == {"succeeded"}
    finally:
        proxy.close()
        worker.stop()


@pytest.mark.slow
def test_a_job_that_always_kills_its_pool_process_ends_dead_after_its_attempts_on_rabbitmq(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a handler that SIGKILLs its own pool process, allowed one retry, on RabbitMQ (which
    # redelivers a lost pool process's message at once, while its attempt's lease still runs)
    client = create_app(rig).test_client()
    worker = worker_on(rig, tmp_path, "w").start()
    try:
        worker.wait_ready(own_redis, WITNESS)
        response = client.post(
            "/v1/jobs",
            json={"jobType": "witness.crash", "payload": {}, "options": {"maxRetries": 1}},
            headers=auth("acme"),
        )
        assert response.status_code == 202
        job_id = str(response.get_json()["jobId"])
        # when it runs, then it ends dead after exactly 2 attempts, each started once
        doc = wait_for_state(client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
        assert (doc["attempts"], doc["error"]["type"]) == (2, "WorkerLost")
        assert [s["attempt"] for s in witness_starts(own_redis, job_id)] == [1, 2]
        assert_invariants(own_redis, client, [job_id], timeout=10)
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_job_cancelled_while_its_message_waits_on_rabbitmq_never_runs(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker on RabbitMQ whose two processes are busy, and a job whose message the
    # dispatcher has published to the queue behind them
    app = create_celery(rig)
    client = create_app(rig).test_client()
    worker = worker_on(rig, tmp_path, "w").start()
    try:
        worker.wait_ready(own_redis, WITNESS)
        busy = [submit(client, "witness.sleep", {"seconds": 3.0}) for _ in range(2)]
        wait_for(lambda: len(running_ids(own_redis, busy)) == 2, timeout=30)
        doomed = submit(client, "witness.sleep", {"seconds": 0.1})
        wait_for(lambda: ready_messages(app, rig.default_queue) >= 1, timeout=10)
        assert own_redis.zscore(keys.ready(rig.default_queue, "acme"), doomed) is None  # published
        # when it is cancelled while its message waits
        response = client.post(f"/v1/jobs/{doomed}/cancel", headers=auth("acme"))
        assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
        # then its message, once taken, starts nothing; the rest end as they should
        assert_invariants(own_redis, client, [*busy, doomed], timeout=30)
        wait_for(lambda: ready_messages(app, rig.default_queue) == 0, timeout=15)
        time.sleep(0.5)
        assert witness_starts(own_redis, doomed) == []
        assert docs_of(client, [doomed])[doomed]["state"] == "cancelled"
    finally:
        worker.stop()


@pytest.mark.slow
def test_sigterm_ends_in_bounded_time_while_the_link_to_rabbitmq_is_silent(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker whose link to RabbitMQ goes through a proxy, running two jobs with more waiting
    client = create_app(rig).test_client()
    proxy = RedisProxy(urlparse(AMQP_URL).port or 5672)
    first = worker_on(rig, tmp_path, "first", broker_url=amqp_url_via(proxy.port)).start()
    second: WorkerProcess | None = None
    try:
        first.wait_ready(own_redis, WITNESS)
        accepted = [submit(client, "witness.sleep", {"seconds": 2.0}) for _ in range(6)]
        wait_for(lambda: len(running_ids(own_redis, accepted)) == 2, timeout=30)
        running = running_ids(own_redis, accepted)
        # when the link to RabbitMQ goes silent (a partition: no answer, no reset) and the worker
        # gets SIGTERM
        proxy.stall()
        first.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # then it exits within its soft shutdown and the margin, not never
        assert first.process is not None
        first.process.wait(SOFT_SHUTDOWN_SECONDS + SHUTDOWN_MARGIN_SECONDS + 5)
        assert time.monotonic() - signalled <= SOFT_SHUTDOWN_SECONDS + SHUTDOWN_MARGIN_SECONDS + 5
        # and the jobs it ran finished there, once (their outcomes go to Redis, not the broker)
        docs = docs_of(client, running)
        assert {j: (d["state"], d["attempts"]) for j, d in docs.items()} == {j: ("succeeded", 1) for j in running}
        # and once the link is back (RabbitMQ puts back what the worker held unacked), another
        # worker brings every job to a final state, each attempt started once, the backlog exact
        proxy.resume()
        second = worker_on(rig, tmp_path, "second").start()
        assert_invariants(own_redis, client, accepted, timeout=60)
    finally:
        proxy.close()
        first.stop()
        if second is not None:
            second.stop()


def started_at(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(doc["startedAt"]).replace("Z", "+00:00"))


def test_a_tenants_many_recovered_jobs_do_not_hold_back_another_tenants_job_on_rabbitmq(
    rig: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a RabbitMQ queue, and tenant A's 60 jobs running on a worker
    # that died (their attempts' leases lapse at once: a worker of many processes lost, or many
    # HTTP jobs whose receivers answered 202 and never reported)
    client = create_app(rig).test_client()
    worker = WorkerProcess(settings_env(rig), tmp_path / "w.log", queues=[rig.default_queue], concurrency=1).start()
    store = JobStore(own_redis)
    a_ids: list[str] = []
    try:
        worker.wait_ready(own_redis, WITNESS)
        for _ in range(60):
            job = Job(
                job_id=new_job_id(),
                tenant_id="acme",
                job_type="diag.echo",
                queue=rig.default_queue,
                payload={},
                trace_id=new_trace_id(),
                created_at=utc_now(),
                priority=9,
            )
            store.create(job)
            claimed = store.claim(job.job_id, owner="gone", lease_seconds=1.0, fallback_max_retries=3, lost_error={})
            assert claimed.job is not None
            a_ids.append(job.job_id)
        # when the sweep finds them and the first of their next attempts has started, and tenant B
        # then submits one job
        wait_for(lambda: any(own_redis.hget(keys.job(j), "attempts") == "2" for j in a_ids), timeout=30)
        response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("globex"))
        b_queued = datetime.now(UTC)
        b_doc = wait_for_state(client, "globex", response.get_json()["jobId"], {"succeeded"}, timeout=60)
        # then B's job starts after a few of A's only: A's recovered jobs take A's turns, they do
        # not all go ahead of it (whatever their priority)
        ahead = [
            d
            for d in docs_of(client, a_ids).values()
            if d["attempts"] == 2 and d.get("startedAt") and b_queued < started_at(d) < started_at(b_doc)
        ]
        assert len(ahead) <= 5, f"{len(ahead)} of A's recovered jobs started after B's was queued and before it"
        # and every recovered job still runs once more, at its second attempt
        assert_invariants(own_redis, client, a_ids, timeout=60)
        assert {d["attempts"] for d in docs_of(client, a_ids).values()} == {2}
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()
