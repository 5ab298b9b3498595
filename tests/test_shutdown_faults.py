"""Graceful shutdown (promise 7): a worker's SIGTERM ends in a bounded time even if its link
to Redis stalls or Redis goes away; and every job it held still ends (promise 1)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys
from pulse_core.broker.celery_app import WORKER_ENV
from pulse_core.redis_client import connect
from pulse_worker.shutdown import SHUTDOWN_MARGIN_SECONDS
from tests.faults import RedisProxy, assert_invariants, private_settings, submit
from tests.support import WorkerProcess, settings_env, wait_for, write_tenants_file

SOFT_SHUTDOWN_SECONDS = 3.0
#: How long past its soft shutdown a worker cut off from Redis may take to exit: its last
#: broker commands (requeue what it reserved, leave its control queue) each give up after
#: the broker's socket timeout (docs/execution-guarantees.md, "Shutdown").
EXIT_MARGIN_SECONDS = 30.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_ends_in_bounded_time_while_the_link_to_redis_is_silent(
    tmp_path: Path, private_redis: EmbeddedRedis
) -> None:
    # given a worker whose link to Redis goes through a proxy, running jobs with more queued
    tenants = write_tenants_file(tmp_path / "tenants.toml")
    direct = private_settings(private_redis.url, tenants, queued_check_seconds=3.0)
    proxy = RedisProxy(private_redis.port)
    through_proxy = private_settings(
        proxy.url, tenants, queued_check_seconds=3.0, soft_shutdown_seconds=SOFT_SHUTDOWN_SECONDS
    )
    store = connect(private_redis.url)
    client = create_app(direct).test_client()
    first = WorkerProcess({**settings_env(through_proxy), **WORKER_ENV}, tmp_path / "first.log", concurrency=2)
    second: WorkerProcess | None = None
    try:
        first.start().wait_ready(store, ["witness.sleep"])
        accepted = [submit(client, "witness.sleep", {"seconds": 1.0}) for _ in range(6)]
        wait_for(lambda: sum(store.hget(keys.job(j), "state") == "running" for j in accepted) == 2, timeout=30)
        # when the link to Redis goes silent (a partition: no RST, no answer) and the worker
        # gets SIGTERM
        proxy.stall()
        first.signal(signal.SIGTERM)
        # then it exits within its soft shutdown and a bounded margin, not never
        exits_within(first, SOFT_SHUTDOWN_SECONDS + EXIT_MARGIN_SECONDS)
        # and once Redis answers again, another worker brings every job to a final state,
        # each attempt started once, the backlog count exact
        proxy.resume()
        second = WorkerProcess(settings_env(direct), tmp_path / "second.log", concurrency=2).start()
        second.wait_ready(store, ["witness.sleep"])
        assert_invariants(store, client, accepted, timeout=60)
    finally:
        proxy.close()
        first.stop()
        if second is not None:
            second.stop()


def exits_within(worker: WorkerProcess, seconds: float) -> None:
    assert worker.process is not None
    started = time.monotonic()
    try:
        worker.process.wait(seconds)
    except subprocess.TimeoutExpired:
        waited = time.monotonic() - started
        pytest.fail(f"worker still running {waited:.0f} s after SIGTERM:\n{worker.log()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_ends_in_bounded_time_while_the_worker_reconnects_to_a_stopped_redis(
    tmp_path: Path, private_redis: EmbeddedRedis
) -> None:
    # given a worker running jobs with more queued, and Redis stopped: the worker's consumer
    # is reconnecting and its lease renewals have given up (its attempts are stopped)
    tenants = write_tenants_file(tmp_path / "tenants.toml")
    settings = private_settings(
        private_redis.url, tenants, queued_check_seconds=3.0, soft_shutdown_seconds=SOFT_SHUTDOWN_SECONDS
    )
    store = connect(private_redis.url)
    client = create_app(settings).test_client()
    env = {**settings_env(settings), **WORKER_ENV}
    first = WorkerProcess(env, tmp_path / "first.log", concurrency=3)
    second: WorkerProcess | None = None
    try:
        first.start().wait_ready(store, ["witness.sleep"])
        accepted = [submit(client, "witness.sleep", {"seconds": 1.0 + n % 3}) for n in range(9)]
        wait_for(lambda: sum(store.hget(keys.job(j), "state") == "running" for j in accepted) == 3, timeout=30)
        private_redis.stop()
        wait_for(lambda: "Connection to broker lost" in first.log() and "running attempt(s)" in first.log())
        # when the worker gets SIGTERM (Celery's pool stop then read a dead pool process's
        # result pipe for ever about 3 times in 4)
        first.signal(signal.SIGTERM)
        # then it exits within its soft shutdown and the margin
        exits_within(first, SOFT_SHUTDOWN_SECONDS + SHUTDOWN_MARGIN_SECONDS + 5)
        # and once Redis is back, another worker brings every job to a final state
        private_redis.start()
        second = WorkerProcess(env, tmp_path / "second.log", concurrency=3).start()
        second.wait_ready(store, ["witness.sleep"])
        assert_invariants(store, client, accepted, timeout=60)
    finally:
        first.stop()
        if second is not None:
            second.stop()
