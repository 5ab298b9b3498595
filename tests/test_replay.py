"""A replay goes through the door like a submit: the tenant's backlog cap and rate limit
hold, a bulk replay stopped by one answers exactly which jobs it replayed, and every
replayed job is watched from the moment it is queued."""

from __future__ import annotations

from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.store.job_store import JobStore
from tests.invariants import backlog_mismatches
from tests.support import auth, bury


def dead_letters(store: JobStore, tenant: str, n: int) -> list[str]:
    """``n`` dead jobs of ``tenant`` (their backlog count back to what it was)."""
    return bury(
        store,
        (
            Job(job_id=new_job_id(), tenant_id=tenant, job_type="diag.echo", queue="t-replay", created_at=utc_now())
            for _ in range(n)
        ),
    )


def test_a_bulk_replay_stops_at_the_backlog_cap_and_says_which_it_replayed(client: FlaskClient, redis: Redis) -> None:
    # given a tenant whose backlog cap is 2, with 3 dead letters and nothing pending
    store = JobStore(redis)
    ids = dead_letters(store, "replay-cap", 3)
    assert store.pending("replay-cap") == 0
    # when it replays all of them at once
    response = client.post("/v1/dead-letters/replay", json={"dryRun": False}, headers=auth("replay-cap"))
    # then two are replayed, and the answer names exactly those two
    body = response.get_json()
    assert response.status_code == 200, body
    assert (body["matched"], body["replayed"]) == (3, 2)
    replayed = set(body["jobIds"])
    assert len(replayed) == 2 and replayed < set(ids)
    assert all(redis.hget(keys.job(j), "state") == "queued" for j in replayed)
    # and each replayed job is watched; the one left is still a dead letter
    assert all(redis.zscore(keys.WATCH, j) is not None for j in replayed)
    (left,) = set(ids) - replayed
    assert redis.zscore(keys.tenant_dead_letters("replay-cap"), left) is not None
    # and replaying it alone is refused like a submit over the cap, changing nothing
    refused = client.post(f"/v1/dead-letters/{left}/replay", headers=auth("replay-cap"))
    assert refused.status_code == 429
    assert refused.get_json()["type"].endswith("backlog-full")
    assert redis.hget(keys.job(left), "state") == "dead"
    assert store.pending("replay-cap") == 2
    assert "replay-cap" not in backlog_mismatches(redis)
    for job_id in replayed:  # no worker reads t-replay
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("replay-cap")).status_code == 200


def test_replays_count_against_the_rate_limit(client: FlaskClient, redis: Redis) -> None:
    # given a tenant limited to 2 jobs a minute, with 3 dead letters
    store = JobStore(redis)
    ids = dead_letters(store, "replay-rate", 3)
    # when it replays them one by one
    answers = [client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth("replay-rate")) for job_id in ids]
    # then the first two are queued again and the third is refused with a Retry-After
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].headers.get("Retry-After")
    assert redis.hget(keys.job(ids[2]), "state") == "dead"
    for job_id in ids[:2]:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("replay-rate")).status_code == 200
