"""Redis as a database, and workers that survive it: start-up checks, a Redis that refuses
writes (out of memory), a Redis restart and a crash with AOF. Each test runs a Redis of its
module's own (the session's Redis is shared), injects the fault for real, then checks the
invariants (tests/faults.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis, free_port
from pulse_core import keys
from pulse_core.errors import ConfigError
from pulse_core.redis_client import check_durability, connect
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.faults import assert_invariants, private_settings, submit
from tests.support import WorkerProcess, auth, child_env, settings_env, wait_for, witness_starts, write_tenants_file

JOB_TYPES = ("diag.echo", "witness.sleep")


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tenants_file(tmp_path_factory.mktemp("faults") / "tenants.toml")


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis these tests may fill, pause and restart (AOF on, as Pulse requires)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("private-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_settings(private_redis: EmbeddedRedis, tenants: Path) -> Settings:
    return private_settings(private_redis.url, tenants)


@pytest.fixture(scope="module")
def store(fault_settings: Settings) -> Redis:
    return connect(fault_settings.redis_url)


@pytest.fixture(scope="module")
def fault_worker(
    fault_settings: Settings, store: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One prefork worker with a single pool process, so a busy worker holds the queue."""
    log = tmp_path_factory.mktemp("fault-worker") / "worker.log"
    process = WorkerProcess(settings_env(fault_settings), log, concurrency=1).start()
    process.wait_ready(store, JOB_TYPES)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fault_client(fault_settings: Settings) -> FlaskClient:
    return create_app(fault_settings).test_client()


@pytest.fixture
def memory_restored(store: Redis) -> Iterator[None]:
    """Whatever a test does to ``maxmemory``, the next one starts with none."""
    yield
    store.config_set("maxmemory", "0")


def alive(worker: WorkerProcess) -> bool:
    assert worker.process is not None
    return worker.process.poll() is None


def running(store: Redis, job_id: str) -> bool:
    return store.hget(keys.job(job_id), "state") == "running"


# --- Redis as a database: start-up checks --------------------------------------------------


def test_an_evicting_redis_stops_the_api_and_the_worker_at_start_up(tmp_path: Path, tenants: Path) -> None:
    # given a Redis that evicts keys when full
    server = EmbeddedRedis(tmp_path / "lru", config={"maxmemory-policy": "allkeys-lru"}).start()
    try:
        settings = private_settings(server.url, tenants)
        # when the API starts, then it refuses, naming the setting and the fix
        with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru") as refused:
            create_app(settings)
        assert "noeviction" in str(refused.value)
        # and a worker refuses to start too, saying the same
        worker = WorkerProcess(settings_env(settings), tmp_path / "worker.log").start()
        assert worker.process is not None
        code = worker.process.wait(60)
        worker.stop()
        assert code != 0
        assert "maxmemory-policy allkeys-lru" in worker.log() and "noeviction" in worker.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (":wrong@127.0.0.1:{port}/0", "invalid username-password pair"),
        ("127.0.0.1:{port}/0", "Authentication required"),
        (":right@127.0.0.1:{port}/99", "DB index is out of range"),
    ],
)
def test_a_redis_that_refuses_the_url_stops_the_api_at_start_up(tmp_path: Path, path: str, refused: str) -> None:
    # given a Redis with a password, and a PULSE_REDIS_URL with a wrong password, none, or a
    # database it does not have (no outage: this does not mend itself, every request would fail)
    server = EmbeddedRedis(tmp_path / "locked").start()
    try:
        connect(server.url).config_set("requirepass", "right")
        url = "redis://" + path.format(port=server.port)
        tenants = write_tenants_file(tmp_path / "tenants.toml")
        env = child_env({"PULSE_REDIS_URL": url, "PULSE_TENANTS_FILE": str(tenants)})
        # when the API starts
        out = subprocess.run(
            [sys.executable, "-m", "pulse_cli.cli", "api", "--port", str(free_port()), "--metrics-port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # then it stops, with one line naming the setting and what Redis said
        assert out.returncode != 0
        assert "the Redis at PULSE_REDIS_URL refused" in out.stderr and refused in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        server.stop()


def test_a_redis_without_aof_is_reported_with_what_a_restart_loses(
    tmp_path: Path, tenants: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a Redis that does not persist (appendonly no) but does not evict
    server = EmbeddedRedis(tmp_path / "volatile", persist=False).start()
    try:
        settings = private_settings(server.url, tenants)
        # when the API starts, then it starts, warning what a restart would lose
        with caplog.at_level(logging.WARNING, logger="pulse.api"):
            create_app(settings)
        warned = [r.getMessage() for r in caplog.records if "appendonly no" in r.getMessage()]
        assert warned and "restart loses" in warned[0] and "appendonly yes" in warned[0]
        # and a worker starts, with the same warning in its log
        worker = WorkerProcess(settings_env(settings), tmp_path / "worker.log").start()
        try:
            worker.wait_ready(connect(server.url), JOB_TYPES)
            assert "appendonly no" in worker.log()
        finally:
            worker.stop()
    finally:
        server.stop()


def test_the_embedded_redis_is_one_pulse_accepts(private_redis: EmbeddedRedis) -> None:
    # given the Redis `pulse dev` and the tests run (EmbeddedRedis with its defaults)
    # then it evicts nothing and persists with AOF: no refusal, no warning
    client = connect(private_redis.url)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert check_durability(client) == []


def test_a_redis_crash_with_appendfsync_always_loses_no_accepted_job(tmp_path: Path, tenants: Path) -> None:
    # given a Redis with AOF and appendfsync always, and jobs answered 202 with no worker yet
    server = EmbeddedRedis(tmp_path / "always", config={"appendfsync": "always"}).start()
    try:
        settings = private_settings(server.url, tenants)
        client = create_app(settings).test_client()
        announce(connect(server.url), ["diag.echo"], 60)  # as a worker that has since stopped
        accepted = [submit(client, "diag.echo", {"n": n}) for n in range(20)]
        # when Redis is killed outright (no chance to flush anything) and started again
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        server.start()
        # then every accepted job is still there, queued, with its message
        store = connect(server.url)
        assert all(store.hget(keys.job(job_id), "state") == "queued" for job_id in accepted)
        # and a worker started now runs every one of them
        worker = WorkerProcess(settings_env(settings), tmp_path / "worker.log").start()
        try:
            worker.wait_ready(store, JOB_TYPES)
            assert_invariants(store, client, accepted)
            assert all(store.hget(keys.job(job_id), "state") == "succeeded" for job_id in accepted)
        finally:
            worker.stop()
    finally:
        server.stop()


#: appendfsync -> how long before a crash of Redis a 202 must have been answered to be kept
#: for sure: nothing is lost with ``always``; with ``everysec`` Redis may hold writes back
#: for up to 2 s (a second between fsyncs, one more while a slow fsync is still running).
KEPT_AFTER_SECONDS = {"always": 0.0, "everysec": 2.0}

#: The crash test's PULSE_QUEUED_CHECK_SECONDS. A message the worker had taken off the list
#: but not yet recorded as unacked dies with Redis; the sweep republishes it within the
#: documented bound on a queue with a backlog (docs/execution-guarantees.md: 9 checks and
#: a sweep interval), which at the default of 60 s is longer than a test should wait.
CRASH_QUEUED_CHECK_SECONDS = 3.0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fsync", list(KEPT_AFTER_SECONDS))
def test_a_redis_killed_mid_stream_keeps_every_job_its_fsync_policy_promises(
    tmp_path: Path, tenants: Path, fsync: str
) -> None:
    # given a Redis with AOF and appendfsync <fsync>, a worker running jobs, and a client
    # submitting jobs without pause
    server = EmbeddedRedis(tmp_path / fsync, config={"appendfsync": fsync}).start()
    settings = private_settings(server.url, tenants, queued_check_seconds=CRASH_QUEUED_CHECK_SECONDS)
    store = connect(server.url)
    worker = WorkerProcess(settings_env(settings), tmp_path / "worker.log").start()
    app = create_app(settings)
    answered: list[tuple[float, str]] = []  # (when the 202 came, job id)
    stop = threading.Event()

    def submit_without_pause() -> None:
        # about 100 jobs a second: a steady stream the worker drains within seconds of the
        # crash, whatever the machine's speed (unpaced, a fast machine queues minutes of work)
        client = app.test_client()
        body = {"jobType": "witness.sleep", "payload": {"seconds": 0.01}}
        while not stop.is_set():
            response = client.post("/v1/jobs", json=body, headers=auth("acme"))
            if response.status_code == 202:
                answered.append((time.monotonic(), response.get_json()["jobId"]))
            stop.wait(0.01)

    submitter = threading.Thread(target=submit_without_pause, daemon=True)
    try:
        worker.wait_ready(store, JOB_TYPES)
        submitter.start()
        kept_after = KEPT_AFTER_SECONDS[fsync]
        wait_for(lambda: len(answered) >= 40 and time.monotonic() - answered[0][0] > kept_after + 1, timeout=60)
        # when redis-server is killed outright (SIGKILL: no chance to flush anything) mid-stream
        assert server.pid is not None
        killed_at = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)
        stop.set()
        submitter.join(30)
        server.stop()
        server.start()
        # then every job answered 202 more than <kept_after> s before the kill survived and
        # reaches a final state, each attempt started once, and `pending` matches the records
        kept = [job_id for at, job_id in answered if at <= killed_at - kept_after]
        assert kept
        client = app.test_client()
        assert_invariants(store, client, kept, timeout=120)
        # and a job answered within the last <kept_after> s is whole (it ends like any
        # other) or gone entirely (no record, no backlog count), never half there
        late = [job_id for at, job_id in answered if at > killed_at - kept_after]
        assert_invariants(store, client, [job_id for job_id in late if store.exists(keys.job(job_id))], timeout=120)
        lost = [job_id for job_id in late if not store.exists(keys.job(job_id))]
        print(f"appendfsync {fsync}: {len(answered)} answered 202, {len(lost)} of the last {kept_after} s lost")
    finally:
        stop.set()
        worker.stop()
        server.stop()


# --- Redis refusing writes: before the claim, at the API, and the worker riding it out -----


@pytest.mark.usefixtures("memory_restored")
def test_an_out_of_memory_redis_loses_no_message_and_no_worker(
    fault_worker: WorkerProcess, fault_client: FlaskClient, store: Redis
) -> None:
    # given a busy worker (its one pool process runs a job) and a job queued behind it
    busy = submit(fault_client, "witness.sleep", {"seconds": 2})
    wait_for(lambda: running(store, busy), timeout=30)
    queued = submit(fault_client, "witness.sleep", {"seconds": 0.1})
    mark = len(fault_worker.log())
    # when Redis refuses every write (out of memory) while the busy job ends and the
    # queued one is delivered: its gate and claim fail before anything is recorded
    store.config_set("maxmemory", "1")
    # then a submit is answered 503 with a problem document, not 500
    refused = fault_client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme"))
    assert refused.status_code == 503, refused.get_data(as_text=True)
    assert refused.content_type.startswith("application/problem+json")
    assert refused.get_json()["status"] == 503 and "Retry-After" in refused.headers
    # and the queued job's message was delivered and given back, not acked away
    wait_for(lambda: f"job {queued}: " in fault_worker.log()[mark:], timeout=30, interval=0.2)
    wait_for(lambda: "message given back" in fault_worker.log()[mark:], timeout=30, interval=0.2)
    time.sleep(2.0)
    # and the worker is still alive
    assert alive(fault_worker), fault_worker.log()[-3000:]
    # when Redis takes writes again
    store.config_set("maxmemory", "0")
    # then both jobs reach a final state, each attempt started once, the backlog count exact
    assert_invariants(store, fault_client, [busy, queued])
    assert store.hget(keys.job(queued), "state") == "succeeded"
    assert witness_starts(store, queued)
    # and the worker goes on taking new jobs
    after = submit(fault_client, "diag.echo", {"after": "oom"})
    assert_invariants(store, fault_client, [after])
    assert alive(fault_worker)
    assert "Unrecoverable error" not in fault_worker.log()


def test_the_api_answers_503_while_redis_is_down(
    fault_client: FlaskClient, private_redis: EmbeddedRedis, store: Redis
) -> None:
    # given Redis stopped
    private_redis.stop()
    try:
        # when a job is submitted or read, then the answer is a 503 problem document
        for response in (
            fault_client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme")),
            fault_client.get("/v1/jobs", headers=auth("acme")),
        ):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.content_type.startswith("application/problem+json")
    finally:
        private_redis.start()
    wait_for(lambda: store.ping(), timeout=10)


def test_a_busy_worker_rides_out_a_redis_restart(
    fault_worker: WorkerProcess, fault_client: FlaskClient, store: Redis, private_redis: EmbeddedRedis
) -> None:
    # given a busy worker and jobs queued behind it
    busy = submit(fault_client, "witness.sleep", {"seconds": 2})
    wait_for(lambda: running(store, busy), timeout=30)
    queued = [submit(fault_client, "witness.sleep", {"seconds": 0.1}) for _ in range(3)]
    # when Redis stops while the job runs (it ends with Redis gone) and starts again
    private_redis.stop()
    time.sleep(4.0)
    assert alive(fault_worker), fault_worker.log()[-3000:]
    private_redis.start()
    # then the worker reconnects on its own and every job reaches a final state, each
    # attempt started once, with the backlog count exact
    assert_invariants(store, fault_client, [busy, *queued], timeout=90)
    assert all(store.hget(keys.job(job_id), "state") == "succeeded" for job_id in [busy, *queued])
    # and the worker is still the same process, taking new jobs
    after = submit(fault_client, "diag.echo", {"after": "restart"})
    assert_invariants(store, fault_client, [after], timeout=60)
    assert alive(fault_worker)
    assert "Unrecoverable error" not in fault_worker.log()


def test_the_api_answers_503_when_its_redis_is_a_read_only_replica(
    tmp_path: Path, tenants: Path, private_redis: EmbeddedRedis, store: Redis
) -> None:
    # given an API whose Redis turned into a read-only replica (as the old primary does after a failover)
    replica = EmbeddedRedis(tmp_path / "replica", config={"replicaof": f"127.0.0.1 {private_redis.port}"}).start()
    try:
        announce(store, ["diag.echo"], 60)
        client = create_app(private_settings(replica.url, tenants)).test_client()
        wait_for(lambda: connect(replica.url).info("replication").get("master_link_status") == "up", timeout=30)
        # when a job is submitted, then Redis refuses the write (READONLY) and the answer is a 503 problem
        response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme"))
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.content_type.startswith("application/problem+json")
    finally:
        replica.stop()
