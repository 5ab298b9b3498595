"""The dispatch depth: derived from the capacity the queue's live workers announce, unless set."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import dispatcher, waiting_lists
from pulse_core.settings import Settings
from pulse_core.store.capacity import announce_capacity, live_capacity
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.job_types import announce
from tests.conftest import DIAG_TYPES
from tests.support import WorkerProcess, auth, settings_env, wait_for, wait_for_state


def fresh(redis: Redis) -> Dispatcher:
    """A dispatcher that reads the capacity at every ask (no 2 s cache)."""
    return Dispatcher(redis, depth=None, broker_lists=waiting_lists, max_age=0.0)


def test_the_depth_is_the_summed_capacity_of_the_queues_live_workers(redis: Redis) -> None:
    queue = f"t-depth-sum-{time.monotonic_ns()}"
    # given nobody announced on the queue: the depth is 1, so a job can still be dispatched
    assert fresh(redis).depth(queue) == 1
    # when two workers announce concurrency 2 (for a short while) and 3 on it
    announce_capacity(redis, "w1@host", 2, [queue], 1.0)
    announce_capacity(redis, "w2@host", 3, [queue, f"{queue}-other"], 600)
    # then the depth is 5, and the other queue counts only the worker that consumes it
    assert fresh(redis).depth(queue) == 5
    assert live_capacity(redis, [queue, f"{queue}-other"]) == {queue: 5, f"{queue}-other": 3}
    # and the key ends: it expires with its longest announcement
    assert 0 < redis.ttl(keys.queue_capacity(queue)) <= 600
    # when the first worker's announcement lapses (it stopped beating)
    wait_for(lambda: fresh(redis).depth(queue) == 3, timeout=5)
    # then the next announcement trims it from the set
    announce_capacity(redis, "w2@host", 3, [queue], 600)
    assert redis.zrange(keys.queue_capacity(queue), 0, -1) == ["w2@host:3"]


def test_a_process_reads_the_capacity_at_most_every_max_age(redis: Redis) -> None:
    queue = f"t-depth-cache-{time.monotonic_ns()}"
    now = [100.0]
    fair = Dispatcher(redis, depth=None, broker_lists=waiting_lists, max_age=2.0, clock=lambda: now[0])
    announce_capacity(redis, "w1@host", 2, [queue], 600)
    assert fair.depth(queue) == 2
    # given another worker announces
    announce_capacity(redis, "w2@host", 3, [queue], 600)
    # then the depth the scripts get stays the one read, until 2 s have passed
    now[0] += 1.9
    assert fair.spec(queue)[1][-1] == 2
    now[0] += 0.1
    assert fair.spec(queue)[1][-1] == 5


def test_pulse_dispatch_depth_set_overrides_the_workers_capacity(settings: Settings, redis: Redis) -> None:
    queue = f"t-depth-fixed-{time.monotonic_ns()}"
    announce_capacity(redis, "w1@host", 2, [queue], 600)
    announce_capacity(redis, "w2@host", 3, [queue], 600)
    # given PULSE_DISPATCH_DEPTH=7 in the environment
    env = {**settings_env(settings), "PULSE_DISPATCH_DEPTH": "7"}
    fixed = Settings.from_process_env(env)
    # then every queue's depth is 7, whatever its workers announced
    assert dispatcher(fixed, redis).depth(queue) == 7
    # and unset, it is derived from their capacity
    env.pop("PULSE_DISPATCH_DEPTH")
    derived = Settings.from_process_env(env)
    assert derived.dispatch_depth is None
    assert dispatcher(derived, redis).depth(queue) == 5


def test_jobs_submitted_before_any_worker_announced_all_run_once_one_starts(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    queue = isolated_settings.default_queue
    local = replace(isolated_settings, dispatch_depth=None)
    client = create_app(local).test_client()
    announce(redis, DIAG_TYPES, 600)  # the jobTypes are known; no worker consumes the queue yet
    # given 6 jobs submitted to the API while no worker has announced the queue's capacity
    ids = []
    for _ in range(6):
        answer = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme"))
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["jobId"])
    # then one message went onto the queue (depth 1), the other 5 wait in the ready set
    assert sum(int(redis.llen(name)) for name in waiting_lists(queue)) == 1
    assert redis.zcard(keys.ready(queue, "acme")) == 5
    # when a 2-process worker starts on the queue
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[queue], concurrency=2).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # then it announced its concurrency on the queue: the depth there is now 2
        wait_for(lambda: fresh(redis).depth(queue) == 2, timeout=10)
        # and every job runs
        for job_id in ids:
            assert wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=30)["state"] == "succeeded"
    finally:
        worker.stop()
    # and a worker that stops withdraws its capacity at once (not a TTL later)
    assert fresh(redis).depth(queue) == 1
    assert redis.zcard(keys.queue_capacity(queue)) == 0


def test_a_host_clock_ahead_neither_drops_live_capacity_nor_hides_it(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"t-depth-clock-{time.monotonic_ns()}"
    # given a worker that announced concurrency 2 for 60 s
    announce_capacity(redis, "w1@host", 2, [queue], 60)
    # when this host's clock runs an hour ahead
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    # and another worker on it announces concurrency 3
    announce_capacity(redis, "w2@host", 3, [queue], 60)
    # then the first worker's live announcement was not trimmed as lapsed, and a reader on
    # this host counts both (times are Redis' clock)
    assert sorted(redis.zrange(keys.queue_capacity(queue), 0, -1)) == ["w1@host:2", "w2@host:3"]
    assert live_capacity(redis, [queue]) == {queue: 5}
    assert fresh(redis).depth(queue) == 5


def test_a_worker_announcing_a_shorter_ttl_does_not_cut_the_others_short(redis: Redis) -> None:
    queue = f"t-depth-ttl-{time.monotonic_ns()}"
    key = keys.queue_capacity(queue)
    # given a worker that announced concurrency 2 for 60 s
    announce_capacity(redis, "w1@host", 2, [queue], 60)
    # when another announces concurrency 3 for 1 s, and its announcement lapses
    announce_capacity(redis, "w2@host", 3, [queue], 1)
    time.sleep(1.2)
    # then the key lives on with the first announcement (it expires with its last live one,
    # about 60 s from the first), and the depth counts the live worker only
    assert 55 <= redis.ttl(key) <= 60
    assert live_capacity(redis, [queue]) == {queue: 2}
    # and when the long one is announced again with a short TTL, the key follows it down
    announce_capacity(redis, "w1@host", 2, [queue], 2)
    assert redis.zrange(key, 0, -1) == ["w1@host:2"]  # the lapsed one was trimmed
    assert 1 <= redis.ttl(key) <= 2
