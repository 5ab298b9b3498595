"""Execution limits hold across two worker processes; a deferral is not an attempt."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import publish_counter
import pytest
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.settings import Settings
from tests.support import (
    WorkerProcess,
    auth,
    running_workers,
    settings_env,
    wait_for,
    wait_for_state,
    write_tenants_file,
)

LIMITED = ("limited.slots", "limited.rate")


def test_rate_limit_and_max_concurrency_hold_across_two_workers(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots (max_concurrency=2 on its handler) and limited.rate, whose
    # declared 100/second the tenants file lowers to 4/second
    path = write_tenants_file(tmp_path / "tenants.toml", extra='[job_types."limited.rate"]\nrate_limit = "4/second"\n')
    settings = replace(
        isolated_settings,
        tenants_file=path,
        handler_modules=("pulse_worker.diagnostics", "limited_handlers"),
    )
    for job_type in LIMITED:
        for what in ("running", "starts", "concurrent"):
            redis.delete(f"limited:{job_type}:{what}")
    client = create_app(settings).test_client()
    # and two worker processes of three pool processes each on the queue
    workers = [
        WorkerProcess(
            settings_env(settings), tmp_path / f"w{n}.log", queues=[settings.default_queue], concurrency=3
        ).start()
        for n in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready(redis, LIMITED)
        # when 10 of each are submitted at once
        jobs = {
            job_type: [
                client.post(
                    "/v1/jobs", json={"jobType": job_type, "payload": {"seconds": 0.4}}, headers=auth("acme")
                ).get_json()["jobId"]
                for _ in range(10)
            ]
            for job_type in LIMITED
        }
        docs = [
            wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=90)
            for ids in jobs.values()
            for job_id in ids
        ]
    finally:
        for worker in workers:
            worker.stop()
    # then every job succeeded at its first attempt (deferrals are not attempts)
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    # and never more than 2 limited.slots ran at once (and 2 did, across the workers)
    concurrent = [int(x) for x in redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 10
    assert max(concurrent) == 2
    # and limited.rate never started more than 4 times in any 1-second window
    starts = sorted(float(x) for x in redis.lrange("limited:limited.rate:starts", 0, -1))
    assert len(starts) == 10
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.0) <= 4, starts
    assert starts[-1] - starts[0] >= 2.0  # 10 starts at 4/second take over 2 seconds
    # and no run slot is left held
    assert redis.zcard("pulse:slots:limited.slots") == 0


def _limited(isolated_settings: Settings, tmp_path: Path, extra: str) -> Settings:
    path = write_tenants_file(tmp_path / "tenants.toml", extra=extra)
    return replace(
        isolated_settings,
        tenants_file=path,
        handler_modules=("pulse_worker.diagnostics", "limited_handlers", "publish_counter"),
    )


def _one_at_a_time(isolated_settings: Settings, redis: Redis, tmp_path: Path) -> Settings:
    """Settings that hold limited.slots to one run at a time, its counters cleared."""
    _clear(redis, "limited.slots")
    return _limited(isolated_settings, tmp_path, '[job_types."limited.slots"]\nmax_concurrency = 1\n')


def _started(doc: dict) -> float:
    """When a job document says its attempt started (epoch seconds)."""
    return datetime.fromisoformat(doc["startedAt"].replace("Z", "+00:00")).timestamp()


def _finished(doc: dict) -> float:
    """When a job document says it finished (epoch seconds)."""
    return datetime.fromisoformat(doc["finishedAt"].replace("Z", "+00:00")).timestamp()


def _clear(redis: Redis, job_type: str) -> None:
    redis.delete(publish_counter.ETA, publish_counter.RETRIES)
    for what in ("running", "starts", "concurrent"):
        redis.delete(f"limited:{job_type}:{what}")


def test_jobs_over_max_concurrency_wait_parked_in_order_without_deferral_messages(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, and two workers of two processes each
    settings = _one_at_a_time(isolated_settings, redis, tmp_path)
    client = create_app(settings).test_client()
    with running_workers(redis, settings, tmp_path, ["limited.slots"], concurrency=2) as workers:
        # when 200 short jobs are submitted at once
        batch = [{"jobType": "limited.slots", "payload": {"seconds": 0.02}}] * 200
        answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
        ids = [item["job"]["jobId"] for item in answer["items"]]
        docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=180) for job_id in ids]
    # then none was lost, each ran once at its first attempt, never two at once
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    concurrent = [int(x) for x in redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 200 and max(concurrent) == 1
    # and one started as the one before ended, without a wait between (no poll): the whole
    # ran in about 200 job times (4 s), not in rounds of a deferral's countdown
    span = max(_finished(d) for d in docs) - min(_started(d) for d in docs)
    print(f"200 jobs of 20 ms one at a time: {span:.1f} s")
    assert span <= 200 * 0.02 * 4, span
    # and the jobs that waited were parked, not deferred: no message was sent back with a countdown
    logs = "".join(worker.log() for worker in workers)
    assert " retry: " not in logs
    assert [int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    # and nothing is left parked or held
    slots = keys.concurrency("limited.slots")
    assert redis.zcard(slots) == 0 and redis.zcard(keys.parked(slots)) == 0
    assert not redis.hexists(keys.PARKED_SLOTS, slots)


def test_jobs_parked_behind_a_limit_lifted_meanwhile_do_not_wait_out_a_handed_slots_grace(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given diag.sleep (no limit of its own) held to one run at a time by the tenants file, and
    # two workers whose lease (the grace of a slot handed to a parked job) is 60 s
    settings = replace(
        _limited(isolated_settings, tmp_path, '[job_types."diag.sleep"]\nmax_concurrency = 1\n'), lease_seconds=60.0
    )
    assert settings.tenants_file is not None
    client = create_app(settings).test_client()
    slots = keys.concurrency("diag.sleep")
    with running_workers(redis, settings, tmp_path, ["diag.sleep"], concurrency=2):
        # and 8 jobs of 1 s submitted at once: one runs, the others wait parked
        batch = [{"jobType": "diag.sleep", "payload": {"seconds": 1.0}}] * 8
        answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
        ids = [item["job"]["jobId"] for item in answer["items"]]
        wait_for(lambda: redis.zcard(keys.parked(slots)) >= 5, timeout=10, interval=0.02)
        # when the operator lifts the limit (the workers re-read the file within a few seconds)
        write_tenants_file(settings.tenants_file)
        lifted = time.time()
        docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=60) for job_id in ids]
    # then each ran once, at its first attempt
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    # and the parked ones went on as those before them ended, not one a grace (60 s) apart: a
    # slot handed to a job that then ran without taking it (its limit lifted) is freed as the
    # job ends (before, it stayed taken for the rest of its grace)
    starts = sorted(round(_started(d) - lifted, 1) for d in docs)
    span = max(_finished(d) for d in docs) - lifted
    print(f"starts after the limit was lifted: {starts}; the last ended {span:.1f} s after")
    assert span < 30, starts
    assert redis.zcard(keys.parked(slots)) == 0 and not redis.hexists(keys.PARKED_SLOTS, slots)


@pytest.mark.slow
def test_the_next_parked_job_starts_within_the_lease_when_the_slot_holders_worker_is_killed(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, two workers, a long job running and
    # three short ones parked behind it
    settings = _one_at_a_time(isolated_settings, redis, tmp_path)
    client = create_app(settings).test_client()
    workers = [
        WorkerProcess(settings_env(settings), tmp_path / f"w{n}.log", queues=[settings.default_queue], concurrency=1)
        for n in range(2)
    ]
    try:
        for worker in workers:
            worker.start().wait_ready(redis, ["limited.slots"])

        def post(seconds: float, **options: int) -> str:
            body = {"jobType": "limited.slots", "payload": {"seconds": seconds}, "options": options}
            return str(client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"])

        # (the long job is not retried: its recovery ends it dead and frees the slot)
        long_job = post(600, maxRetries=0)
        running = wait_for_state(client, "acme", long_job, {"running"}, timeout=30)
        short = [post(0.01) for _ in range(3)]
        wait_for(lambda: redis.zcard(keys.parked(keys.concurrency("limited.slots"))) == 3, timeout=30)
        # when the worker running the long job is SIGKILLed
        owner = str(redis.hget(keys.job(long_job), "owner"))
        holder = next(w for w in workers if w.runs(owner))
        killed_at = time.time()
        holder.kill_group()
        # then the next parked job starts on the other worker within the lease (plus a tick)
        first = wait_for_state(client, "acme", short[0], {"succeeded"}, timeout=60)
        started = _started(first)
        assert started - killed_at <= settings.lease_seconds + 3.0, started - killed_at
        for job_id in short[1:]:
            wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=60)
        assert running["attempts"] == 1
        assert wait_for_state(client, "acme", long_job, {"dead"})["error"]["type"] == "WorkerLost"
    finally:
        client.post(f"/v1/jobs/{long_job}/cancel", headers=auth("acme"))
        for worker in workers:
            worker.stop()
    # and the short ones ran one at a time (the killed run never counted itself out: 1 + 1)
    concurrent = [int(x) for x in redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert concurrent == [1, 2, 2, 2]


def test_a_rate_limited_job_type_starts_no_more_than_its_limit_per_window_without_copies(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.rate held to 5 starts in any 2 seconds, and two workers
    settings = _limited(isolated_settings, tmp_path, '[job_types."limited.rate"]\nrate_limit = "5/2second"\n')
    _clear(redis, "limited.rate")
    client = create_app(settings).test_client()
    with running_workers(redis, settings, tmp_path, ["limited.rate"], concurrency=2) as workers:
        # when 20 jobs are submitted at once
        batch = [{"jobType": "limited.rate", "payload": {}}] * 20
        answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
        ids = [item["job"]["jobId"] for item in answer["items"]]
        docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=120) for job_id in ids]
    # then each ran exactly once, at its first attempt
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    starts = sorted(float(x) for x in redis.lrange("limited:limited.rate:starts", 0, -1))
    assert len(starts) == 20
    # and never more than 5 started in any 2-second window
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 2.0) <= 5, starts
    # and the waiting ones were parked until the window allowed, not sent back with a countdown
    assert " retry: " not in "".join(worker.log() for worker in workers)
    assert [int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    assert redis.zmscore(keys.PARKED_UNTIL, ids) == [None] * len(ids)


def test_a_tenants_max_running_holds_across_workers_and_parks_the_rest(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given acme may run one job at a time (max_running = 1), limited.slots two at a time,
    # and two workers of two processes each
    path = write_tenants_file(tmp_path / "tenants.toml", tenant_settings={"acme": "max_running = 1"})
    settings = replace(
        isolated_settings, tenants_file=path, handler_modules=("pulse_worker.diagnostics", "limited_handlers")
    )
    _clear(redis, "limited.slots")
    client = create_app(settings).test_client()
    with running_workers(redis, settings, tmp_path, ["limited.slots"], concurrency=2):
        # when acme submits 12 jobs at once
        batch = [{"jobType": "limited.slots", "payload": {"seconds": 0.1}}] * 12
        answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
        docs = [wait_for_state(client, "acme", i["job"]["jobId"], {"succeeded"}, timeout=90) for i in answer["items"]]
    # then each ran once, and never two at once
    assert {d["attempts"] for d in docs} == {1}
    concurrent = [int(x) for x in redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 12 and max(concurrent) == 1
    assert redis.zcard(keys.tenant_running("acme")) == 0


def test_a_job_whose_limits_redis_fails_to_check_waits_parked_then_runs_once(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, whose slot set Redis refuses to read for a
    # while (a key of the wrong type: every check of the limit fails with a Redis error)
    settings = _one_at_a_time(isolated_settings, redis, tmp_path)
    slots = keys.concurrency("limited.slots")
    redis.set(slots, "not a sorted set")
    client = create_app(settings).test_client()
    try:
        with running_workers(redis, settings, tmp_path, ["limited.slots"], concurrency=1, count=1) as workers:
            # when a job is submitted, and Redis fails its check a few times
            body = {"jobType": "limited.slots", "payload": {"seconds": 0.01}}
            job_id = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"]
            wait_for(lambda: workers[0].log().count("execution limits not checked") >= 2, timeout=30)
            # then it waited parked in Redis between checks, never running
            assert redis.hget(keys.job(job_id), "state") == "queued"
            # and once Redis checks the limit again, it runs once
            redis.delete(slots)
            doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)
    finally:
        redis.delete(slots)
    assert (doc["state"], doc["attempts"]) == ("succeeded", 1)
    # and no deferral message was sent back with a countdown
    assert [int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    assert redis.zscore(keys.PARKED_UNTIL, job_id) is None


def test_a_retry_due_behind_a_full_concurrency_limit_waits_parked_then_gets_a_slot(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.flaky held to one run at a time, and two workers of two processes each
    settings = _limited(isolated_settings, tmp_path, "")
    _clear(redis, "limited.flaky")
    slots = keys.concurrency("limited.flaky")
    client = create_app(settings).test_client()
    with running_workers(redis, settings, tmp_path, ["limited.flaky"], concurrency=2) as workers:
        # when a job whose first attempt asks for a retry 2 s later is submitted, then, once it
        # is retrying, a job that holds the one slot for 5 s and 5 short ones
        first = {"jobType": "limited.flaky", "payload": {"seconds": 0.05, "fail_first": True, "retry_in": 2.0}}
        rest = [{"jobType": "limited.flaky", "payload": {"seconds": 5.0}}]
        rest += [{"jobType": "limited.flaky", "payload": {"seconds": 0.1}}] * 5
        flaky_id = client.post("/v1/jobs", json=first, headers=auth("acme")).get_json()["jobId"]
        wait_for(lambda: redis.hget(keys.job(flaky_id), "state") == "retrying", timeout=30)
        answer = client.post("/v1/batches", json={"jobs": rest}, headers=auth("acme")).get_json()
        ids = [item["job"]["jobId"] for item in answer["items"]]
        # then its retry, due while the long job holds the slot, waits parked behind the limit
        wait_for(lambda: redis.zscore(keys.parked(slots), flaky_id) is not None, timeout=30, interval=0.01)
        docs = {job_id: wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=90) for job_id in ids}
        flaky = wait_for_state(client, "acme", flaky_id, {"succeeded", "dead"}, timeout=30)
        logs = "".join(worker.log() for worker in workers)
    # and is handed the slot when it frees: it succeeds at its second attempt, the others at their first
    assert (flaky["state"], flaky["attempts"]) == ("succeeded", 2)
    assert {(d["state"], d["attempts"]) for d in docs.values()} == {("succeeded", 1)}
    # and never two ran at once, every attempt once
    concurrent = [int(x) for x in redis.lrange("limited:limited.flaky:concurrent", 0, -1)]
    assert len(concurrent) == 8 and max(concurrent) == 1
    # and nothing waited as a message sent back with a countdown, nothing is left parked or held
    assert " retry: " not in logs
    assert [int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    assert redis.zcard(slots) == 0 and redis.zcard(keys.parked(slots)) == 0
    assert redis.zscore(keys.PARKED_UNTIL, flaky_id) is None


def test_a_worker_whose_clock_runs_an_hour_ahead_still_holds_max_concurrency(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, a worker with a right clock and one whose
    # clock runs an hour ahead (tests/handlers/clock_ahead.py)
    settings = _one_at_a_time(isolated_settings, redis, tmp_path)
    client = create_app(settings).test_client()
    modules = ",".join([*settings.handler_modules, "clock_ahead"])
    ahead_env = {**settings_env(settings), "PULSE_HANDLER_MODULES": modules}
    workers = [
        WorkerProcess(env, tmp_path / f"{name}.log", queues=[settings.default_queue], concurrency=2)
        for name, env in (("right", settings_env(settings)), ("ahead", ahead_env))
    ]
    try:
        for worker in workers:
            worker.start().wait_ready(redis, ["limited.slots"])
        # when 30 jobs of 0.1 s are submitted at once
        batch = [{"jobType": "limited.slots", "payload": {"seconds": 0.1}}] * 30
        answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
        ids = [item["job"]["jobId"] for item in answer["items"]]
        docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=120) for job_id in ids]
    finally:
        for worker in workers:
            worker.stop()
    # then each ran once, and never two at once: the worker ahead never took the slot of a job
    # still running on the other (slot holders are timed by Redis' clock, as leases are)
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    concurrent = [int(x) for x in redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 30 and max(concurrent) == 1, concurrent
    # and the worker ahead took part (its handler records its start an hour ahead)
    starts = [float(x) for x in redis.lrange("limited:limited.slots:starts", 0, -1)]
    ahead = [s for s in starts if s > time.time() + 1800]
    assert 0 < len(ahead) < 30, f"{len(ahead)} of 30 ran on the worker ahead"
    slots = keys.concurrency("limited.slots")
    assert redis.zcard(slots) == 0 and redis.zcard(keys.parked(slots)) == 0


def test_a_flood_of_a_limited_job_type_does_not_hold_back_another_tenants_job_of_it(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time across tenants, and one worker
    settings = _one_at_a_time(isolated_settings, redis, tmp_path)
    client = create_app(settings).test_client()
    slots = keys.concurrency("limited.slots")
    with running_workers(redis, settings, tmp_path, ["limited.slots"], concurrency=2, count=1):
        # and acme's 60 jobs of it, some already waiting parked on the full slot set
        flood = [{"jobType": "limited.slots", "payload": {"seconds": 0.1}}] * 60
        answer = client.post("/v1/batches", json={"jobs": flood}, headers=auth("acme")).get_json()
        flood_ids = [item["job"]["jobId"] for item in answer["items"]]
        wait_for(lambda: redis.zcard(keys.parked(slots)) >= 10, timeout=30)
        # when globex submits one job of the same jobType
        submitted = time.time()
        body = {"jobType": "limited.slots", "payload": {"seconds": 0.1}}
        job_id = client.post("/v1/jobs", json=body, headers=auth("globex")).get_json()["jobId"]
        mine = wait_for_state(client, "globex", job_id, {"succeeded"}, timeout=120)
        flood_docs = [wait_for_state(client, "acme", j, {"succeeded"}, timeout=120) for j in flood_ids]
    # then it starts after a few of acme's jobs at most, not after all of those still waiting
    ahead = [doc for doc in flood_docs if submitted < _started(doc) < _started(mine)]
    assert len(ahead) <= 5, f"{len(ahead)} of acme's jobs started first ({_started(mine) - submitted:.1f} s)"
