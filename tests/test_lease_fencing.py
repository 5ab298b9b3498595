"""Leases that cannot lie: a worker whose link to Redis stalls stops its own running
attempts before their leases lapse, so the attempt that takes over elsewhere is the only
one running. The stall is real: the worker reaches Redis through a TCP proxy that stops
forwarding (its connections stay open, as in a network partition)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.broker.celery_app import WORKER_ENV
from pulse_core.redis_client import connect
from tests.faults import RedisProxy, assert_invariants, private_settings, submit
from tests.support import WorkerProcess, settings_env, wait_for, witness_starts, write_tenants_file


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        yield server
    finally:
        server.stop()


def _dead(pid: int) -> bool:
    """Whether process ``pid`` is gone (a zombie waiting to be reaped counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_cut_off_from_redis_stops_its_attempt_before_another_takes_over(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # given worker A, which reaches Redis only through a proxy, running a long job
    tenants = write_tenants_file(tmp_path / "tenants.toml")
    direct = private_settings(private_redis.url, tenants, default_queue="fence")
    proxy = RedisProxy(int(private_redis.url.rsplit(":", 1)[1].split("/")[0]))
    through_proxy = replace(
        direct, redis_url=f"redis://127.0.0.1:{proxy.port}/0", broker_url=f"redis://127.0.0.1:{proxy.port}/0"
    )
    redis = connect(private_redis.url)
    client = create_app(direct).test_client()
    env_a = {**settings_env(through_proxy), **WORKER_ENV}
    worker_a = WorkerProcess(env_a, tmp_path / "a.log", queues=["fence"], concurrency=1).start()
    worker_b: WorkerProcess | None = None
    try:
        worker_a.wait_ready(redis, ("witness.sleep",))
        job_id = submit(client, "witness.sleep", {"seconds": 10})
        wait_for(lambda: witness_starts(redis, job_id), timeout=30)
        first = witness_starts(redis, job_id)[0]
        # when A's link to Redis stalls, and worker B (reaching Redis directly) is up
        proxy.stall()
        stalled_at = time.time()
        worker_b = WorkerProcess({**settings_env(direct), **WORKER_ENV}, tmp_path / "b.log", queues=["fence"]).start()
        worker_b.wait_ready(redis, ("witness.sleep",))
        # then A's attempt stops (its process is killed) before the lease lapses, and only
        # then does B start the next attempt
        stopped_at = wait_for(lambda: time.time() if _dead(first["pid"]) else None, timeout=30, interval=0.05)
        wait_for(lambda: len(witness_starts(redis, job_id)) >= 2, timeout=60)
        second = witness_starts(redis, job_id)[1]
        assert second["attempt"] == 2 and second["pid"] != first["pid"]
        assert stopped_at - stalled_at < direct.lease_seconds, "A's attempt outlived its lease"
        assert stopped_at < second["t"], "two attempts ran at once"
        # and once the link is back, the job ends as the second attempt says, once
        proxy.resume()
        assert_invariants(redis, client, [job_id], timeout=60)
        assert redis.hget(f"pulse:job:{job_id}", "state") == "succeeded"
    finally:
        proxy.resume()
        if worker_b is not None:
            worker_b.stop()
        worker_a.stop()
        proxy.close()
