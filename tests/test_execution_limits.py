"""Execution limits hold across two worker processes; a deferral is not an attempt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from redis import Redis

from pulse_api import create_app
from pulse_core.settings import Settings
from tests.support import WorkerProcess, auth, settings_env, wait_for_state, write_tenants_file

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
