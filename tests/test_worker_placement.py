"""Worker identities and placement: every worker has a name of its own and renews only the
leases of attempts it claimed; a job that reaches a worker without its handler goes back for
one that has it, and dies as unknown only after a grace period with no live worker for it.
Real workers on a Redis of this module's own."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import publish_counter
import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys
from pulse_core.broker.celery_app import WORKER_ENV, create_celery, publish_job
from pulse_core.jobs import Job, new_job_id, new_trace_id, utc_now
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_worker.runtime import lease_owner
from pulse_worker.task import WRONG_WORKER_DELAY_SECONDS
from tests.faults import assert_invariants, private_settings, submit
from tests.support import WorkerProcess, child_env, settings_env, wait_for, write_tenants_file

FULL = ("diag.echo", "witness.sleep")
#: Jobs sent one at a time past an idle worker without their handler, and the most times one
#: may bounce off it before the idle worker with the handler takes it.
BOUNCE_ROUNDS = 12
MAX_BOUNCES = 8
BOUNCE_ROUND_SECONDS = 30.0
READY = re.compile(r"([\w.-]+@[\w.-]+) ready\.")


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("placement-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def placement_settings(private_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tenants = write_tenants_file(tmp_path_factory.mktemp("placement") / "tenants.toml")
    return private_settings(private_redis.url, tenants)


@pytest.fixture(scope="module")
def store(placement_settings: Settings) -> Redis:
    return connect(placement_settings.redis_url)


@pytest.fixture(scope="module")
def client(placement_settings: Settings) -> FlaskClient:
    return create_app(placement_settings).test_client()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts; all stopped (and resumed first, if paused) at its end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGCONT)
        worker.stop()


def start(
    workers: list[WorkerProcess], settings: Settings, log: Path, *, modules: str | None = None, **kwargs: object
) -> WorkerProcess:
    env = {**settings_env(settings), **WORKER_ENV}
    if modules is not None:
        env["PULSE_HANDLER_MODULES"] = modules
    worker = WorkerProcess(env, log, concurrency=1, **kwargs).start()  # type: ignore[arg-type]
    workers.append(worker)
    return worker


def name_of(worker: WorkerProcess) -> str:
    found = READY.search(worker.log())
    assert found, worker.log()[-2000:]
    return found.group(1)


def pause(worker: WorkerProcess, signum: int) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signum)


# --- point 14: distinct worker identities ---------------------------------------------------


def test_two_workers_on_one_host_have_their_own_names_and_renew_only_their_own_leases(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given two workers on one host, started without --hostname (as `pulse worker` is)
    first = start(workers, placement_settings, tmp_path / "a.log", default_name=True)
    second = start(workers, placement_settings, tmp_path / "b.log", default_name=True)
    first.wait_ready(store, FULL)
    second.wait_ready(store, FULL)
    # then each has a name of its own, not Celery's shared celery@<host>
    names = {name_of(first), name_of(second)}
    assert len(names) == 2, names
    assert all(re.match(r"^pulse-\d+-[0-9a-f]{6}@", name) for name in names), names
    # when a job runs on one of them
    job_id = submit(client, "witness.sleep", {"seconds": 6})
    wait_for(lambda: store.hget(keys.job(job_id), "state") == "running", timeout=30)
    owner = str(store.hget(keys.job(job_id), "owner"))
    holder, other = (first, second) if owner.startswith(name_of(first) + "/") else (second, first)
    # then its lease names the attempt: the worker's name and the message that started it
    assert owner.startswith(name_of(holder) + "/") and len(owner) > len(name_of(holder)) + 1
    # and a renewal by the other worker, or for another message on the same worker, moves nothing
    lease = store.hget(keys.job(job_id), "leaseUntil")
    task_id = owner.split("/", 1)[1]
    jobs = JobStore(store)
    assert jobs.refresh_leases([(job_id, lease_owner(name_of(other), task_id))], 60) == 0
    assert jobs.refresh_leases([(job_id, lease_owner(name_of(holder), "another-message"))], 60) == 0
    assert store.hget(keys.job(job_id), "leaseUntil") == lease
    # when the holder stalls (SIGSTOP) past its lease, the other takes the job over
    pause(holder, signal.SIGSTOP)
    wait_for(lambda: str(store.hget(keys.job(job_id), "owner") or "").startswith(name_of(other) + "/"), timeout=30)
    pause(holder, signal.SIGCONT)
    # then the job ends once, by the attempt that took over; each attempt started once
    assert_invariants(store, client, [job_id])
    record = store.hgetall(keys.job(job_id))
    assert record["state"] == "succeeded" and record["attempts"] == "2", record


def test_pulse_worker_takes_a_hostname(
    placement_settings: Settings, store: Redis, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    # given `pulse worker --hostname` with a name of the operator's choice
    log_path = tmp_path / "named.log"
    env = child_env({**settings_env(placement_settings), **WORKER_ENV})
    command = [sys.executable, "-m", "pulse_cli.cli", "worker", "--hostname", "night-shift@%h", "--concurrency", "1"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # then the worker runs under that name
        wait_for(lambda: READY.search(log_path.read_text(errors="replace")), timeout=60, interval=0.2)
        found = READY.search(log_path.read_text(errors="replace"))
        assert found and found.group(1).startswith("night-shift@")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


# --- point 13: a job never dies for landing on the wrong worker -----------------------------


@pytest.mark.timeout(180)  # its wait covers the queued check (60 s)
def test_jobs_that_land_on_a_worker_without_their_handler_go_back_and_succeed(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given a worker with the diag/witness handlers and one with only extra.reverse,
    # on the same queue, and the first paused so that the second takes what comes
    store.delete(publish_counter.ETA, publish_counter.RETRIES)
    full = start(workers, placement_settings, tmp_path / "full.log")
    extra = start(workers, placement_settings, tmp_path / "extra.log", modules="extra_handlers,publish_counter")
    full.wait_ready(store, FULL)
    extra.wait_ready(store, ("extra.reverse",))
    pause(full, signal.SIGSTOP)
    # when jobs of both kinds are submitted
    echoes = [submit(client, "diag.echo", {"n": n}) for n in range(10)]
    reversed_ = [submit(client, "extra.reverse", {"text": f"abc{n}"}) for n in range(3)]
    # then the worker without diag.echo gives them back instead of dead-lettering them
    wait_for(lambda: extra.log().count("no handler on this worker") >= 3, timeout=30)
    pause(full, signal.SIGCONT)
    # and every job succeeds on a worker that has its handler; none dies. The wait covers the
    # queued check (PULSE_QUEUED_CHECK_SECONDS, 60 s): a message the stopped worker had taken can
    # be lost with its broker connection (5 s socket timeout), and the sweep republishes it
    # then (a fresh-clone run saw one job still queued, with no message, after 60 s)
    assert_invariants(store, client, [*echoes, *reversed_], timeout=placement_settings.queued_check_seconds + 30)
    states = {job_id: store.hget(keys.job(job_id), "state") for job_id in [*echoes, *reversed_]}
    assert set(states.values()) == {"succeeded"}, states
    assert store.zcard(keys.tenant_dead_letters("acme")) == 0
    # and they waited parked in Redis, not as ETA messages in a worker: none was re-published
    # with a countdown or as a Celery retry
    assert [int(store.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    assert store.zmscore(keys.PARKED_UNTIL, echoes) == [None] * len(echoes)


def queue_homeless_job(store: Redis, settings: Settings) -> Job:
    """A queued job of a jobType no worker has (``retired.type``), its message published."""
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="retired.type",
        queue=settings.default_queue,
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    JobStore(store).create(job)
    publish_job(create_celery(settings), job)
    return job


def test_a_job_no_live_worker_can_run_dies_only_after_the_grace_period(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given a live worker, and a queued job of a jobType that no live worker announces
    store.delete(publish_counter.ETA, publish_counter.RETRIES)
    modules = ",".join([*placement_settings.handler_modules, "publish_counter"])
    worker = start(workers, placement_settings, tmp_path / "w.log", modules=modules)
    worker.wait_ready(store, FULL)
    sent = time.time()
    job = queue_homeless_job(store, placement_settings)
    # when the worker meets it, then it waits, queued, through the grace period
    wait_for(lambda: "no live worker has its handler" in worker.log(), timeout=30)
    time.sleep(placement_settings.unknown_job_type_grace_seconds / 2)
    assert store.hget(keys.job(job.job_id), "state") == "queued"
    # parked in Redis between looks, its grace counted from its first look (kept in Redis)
    assert store.zscore(keys.PARKED_UNTIL, job.job_id) is not None
    since = store.get(keys.homeless_since(job.job_id))
    assert float(str(since)) >= sent
    # and each look renews that record, so a slow round trip through a busy queue cannot let
    # it lapse and the grace start again
    store.expire(keys.homeless_since(job.job_id), 8)
    wait_for(lambda: store.ttl(keys.homeless_since(job.job_id)) > 60, timeout=8, interval=0.1)
    assert store.get(keys.homeless_since(job.job_id)) == since
    # and only after the grace period does it die as unknown, filed in the dead letters
    wait_for(lambda: store.hget(keys.job(job.job_id), "state") == "dead", timeout=30, interval=0.1)
    died = time.time()
    assert died - sent >= placement_settings.unknown_job_type_grace_seconds
    assert '"UnknownJobTypeAtWorker"' in str(store.hget(keys.job(job.job_id), "error"))
    assert store.zscore(keys.tenant_dead_letters("acme"), job.job_id) is not None
    assert_invariants(store, client, [job.job_id])
    # and no message waited in the worker meanwhile: none was re-published with a countdown
    assert [int(store.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]


def test_a_job_whose_queue_has_no_worker_with_its_handler_dies_after_the_grace_not_never(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given the job's queue consumed only by a worker without diag.echo, and diag.echo live on
    # a worker of another queue (so the API accepts it)
    own = start(workers, placement_settings, tmp_path / "own.log", modules="extra_handlers")
    other = start(workers, placement_settings, tmp_path / "other.log", queues=["elsewhere"])
    own.wait_ready(store, ("extra.reverse",))
    other.wait_ready(store, FULL)
    # when a diag.echo job is submitted to the first queue
    sent = time.time()
    job_id = submit(client, "diag.echo", {"n": 1})
    # then it waits through the unknown-jobType grace, then dies as unknown at its queue's
    # worker: it reaches a final state rather than going back to that queue for ever
    wait_for(lambda: store.hget(keys.job(job_id), "state") == "dead", timeout=30, interval=0.1)
    assert time.time() - sent >= placement_settings.unknown_job_type_grace_seconds
    assert '"UnknownJobTypeAtWorker"' in str(store.hget(keys.job(job_id), "error"))
    assert f"no live worker has its handler on queue {placement_settings.default_queue}" in own.log()
    assert_invariants(store, client, [job_id])


def test_a_worker_with_no_handlers_refuses_to_start(
    placement_settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given a worker whose settings register no handler at all
    worker = start(workers, placement_settings, tmp_path / "empty.log", modules="")
    # when it starts, then it stops, naming the settings to check
    assert worker.process is not None
    code = worker.process.wait(60)
    assert code != 0
    assert "no handlers registered" in worker.log()
    assert "PULSE_HANDLER_MODULES" in worker.log() and "pulse.handlers" in worker.log()


def test_a_worker_whose_clock_runs_ahead_does_not_cut_an_unknown_jobs_grace_short(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given a 20 s grace, and a worker with a right clock that met a queued job of a jobType
    # no live worker announces (its grace started then, kept in Redis)
    settings = replace(placement_settings, unknown_job_type_grace_seconds=20.0)
    right = start(workers, settings, tmp_path / "right.log")
    right.wait_ready(store, FULL)
    sent = time.time()
    job = queue_homeless_job(store, settings)
    wait_for(lambda: store.exists(keys.homeless_since(job.job_id)) == 1, timeout=30, interval=0.1)
    # when that worker stops and one whose clock runs an hour ahead meets the job next
    right.stop()
    modules = ",".join([*settings.handler_modules, "clock_ahead"])
    ahead = start(workers, settings, tmp_path / "ahead.log", modules=modules)
    ahead.wait_ready(store, FULL)
    wait_for(lambda: "no live worker has its handler" in ahead.log(), timeout=30)
    # then the job still waits, queued, for the rest of its grace (counted by Redis' clock,
    # not as an hour over) and dies as unknown only once it has passed
    assert store.hget(keys.job(job.job_id), "state") == "queued"
    wait_for(lambda: store.hget(keys.job(job.job_id), "state") == "dead", timeout=60, interval=0.1)
    assert time.time() - sent >= settings.unknown_job_type_grace_seconds
    assert '"UnknownJobTypeAtWorker"' in str(store.hget(keys.job(job.job_id), "error"))
    assert_invariants(store, client, [job.job_id])


def test_a_job_that_bounces_off_an_idle_worker_without_its_handler_reaches_the_idle_one_that_has_it_at_once(
    placement_settings: Settings, store: Redis, client: FlaskClient, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # given two idle workers on one queue: one without extra.reverse, one with it (and nothing else)
    full = start(workers, placement_settings, tmp_path / "full.log")
    extra = start(workers, placement_settings, tmp_path / "extra.log", modules="extra_handlers")
    full.wait_ready(store, FULL)
    extra.wait_ready(store, ("extra.reverse",))
    bounces: list[int] = []
    took: list[float] = []
    for n in range(BOUNCE_ROUNDS):
        # when a job only the second can run is submitted while both wait for work
        sent = time.monotonic()
        job_id = submit(client, "extra.reverse", {"text": f"r{n}"})
        wait_for(lambda: store.hget(keys.job(job_id), "state") == "succeeded", timeout=BOUNCE_ROUND_SECONDS)  # noqa: B023
        took.append(time.monotonic() - sent)
        bounces.append(full.log().count(f"job {job_id} (extra.reverse): no handler on this worker"))
    # then each reaches the worker that has its handler without waiting out a bounce (1 to 2 s),
    # and none bounces on and on: the worker without it does not win every race for the message
    # it gave back
    assert statistics.median(took) < min(WRONG_WORKER_DELAY_SECONDS), (took, bounces)
    assert max(bounces) <= MAX_BOUNCES, (took, bounces)
