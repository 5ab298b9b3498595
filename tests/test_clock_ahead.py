"""A host whose clock runs ahead of the others: what Pulse times by a clock, it times by Redis'.

Leases are timed by Redis' clock (the claim script reads ``TIME``), so everything compared
with them, or shared between hosts, must be too: a worker an hour ahead must neither take a
running job's run slot nor drop the jobTypes other workers announced.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys
from pulse_core.guards.execution_limits import ExecutionGate
from pulse_core.policy import ExecutionLimits
from pulse_core.redis_client import connect, server_time
from pulse_core.store.job_types import LiveJobTypesCollector, announce, live_job_types

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
