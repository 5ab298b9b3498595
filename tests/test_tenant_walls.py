"""Tenants are walled off: another tenant's ids answer 404 at every endpoint, and nothing
of the owner's changes — no record, TTL, counter, index or watch entry."""

from __future__ import annotations

import time
from typing import Any

from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.store.job_store import JobStore
from tests.support import auth

OWNER, INTRUDER = "walled", "intruder"


def owners_jobs(store: JobStore) -> dict[str, str]:
    """One job of the owner's in each kind of state: state -> job id."""
    ids: dict[str, str] = {}
    for state in ("queued", "scheduled", "running", "succeeded", "dead"):
        job = Job(
            job_id=new_job_id(),
            tenant_id=OWNER,
            job_type="diag.echo",
            queue="t-walls",
            created_at=utc_now(),
            state=JobState.SCHEDULED if state == "scheduled" else JobState.QUEUED,
            due_at=time.time() + 3600 if state == "scheduled" else None,
        )
        store.create(job, watch_at=time.time() + 3600)
        if state == "running":
            claimed = store.claim(job.job_id, owner="w", lease_seconds=3600, fallback_max_retries=3, lost_error={})
            assert claimed.job is not None
        if state in ("succeeded", "dead"):
            claimed = store.claim(job.job_id, owner="w", lease_seconds=3600, fallback_max_retries=3, lost_error={})
            assert claimed.job is not None
            assert store.finalize(claimed.job, JobState(state), result_json="{}" if state == "succeeded" else "")
        ids[state] = job.job_id
    return ids


def snapshot(redis: Redis, job_ids: list[str]) -> dict[str, Any]:
    """Everything of the owner's: records (with TTL presence), index, dead letters,
    backlog count and watch entries."""
    seen: dict[str, Any] = {}
    for job_id in job_ids:
        key = keys.job(job_id)
        seen[key] = (redis.hgetall(key), redis.ttl(key) == -1)
        seen[f"watch:{job_id}"] = redis.zscore(keys.WATCH, job_id)
    seen["index"] = redis.zrange(keys.tenant_jobs(OWNER), 0, -1, withscores=True)
    seen["dead"] = redis.zrange(keys.tenant_dead_letters(OWNER), 0, -1, withscores=True)
    seen["pending"] = redis.hget(keys.tenant_counts(OWNER), "pending")
    return seen


def test_every_endpoint_answers_another_tenants_ids_404_and_changes_nothing(client: FlaskClient, redis: Redis) -> None:
    # given the owner's jobs in every state, one of them a dead letter
    ids = owners_jobs(JobStore(redis))
    before = snapshot(redis, list(ids.values()))
    intruder = auth(INTRUDER)
    # when the intruder reads, cancels, replays and deletes each of them by id
    answers = []
    for job_id in ids.values():
        answers += [
            ("GET job", client.get(f"/v1/jobs/{job_id}", headers=intruder).status_code),
            ("cancel", client.post(f"/v1/jobs/{job_id}/cancel", headers=intruder).status_code),
            ("GET dead letter", client.get(f"/v1/dead-letters/{job_id}", headers=intruder).status_code),
            ("replay", client.post(f"/v1/dead-letters/{job_id}/replay", headers=intruder).status_code),
            ("DELETE dead letter", client.delete(f"/v1/dead-letters/{job_id}", headers=intruder).status_code),
        ]
    # and lists and bulk-replays its own (empty) view
    listed = client.get("/v1/jobs?limit=100", headers=intruder).get_json()
    letters = client.get("/v1/dead-letters?limit=100", headers=intruder).get_json()
    bulk = client.post("/v1/dead-letters/replay", json={"dryRun": False}, headers=intruder).get_json()
    # then every answer by id is a 404, as for a job that does not exist
    assert {name: code for name, code in answers if code != 404} == {}
    # and none of the owner's jobs shows up anywhere the intruder can see
    shown = {item["jobId"] for item in listed["items"]} | {item["jobId"] for item in letters["items"]}
    assert shown.isdisjoint(ids.values())
    assert bulk["replayed"] == 0
    # and nothing of the owner's changed: records, expiries, index, dead letters, backlog, watch
    assert snapshot(redis, list(ids.values())) == before
