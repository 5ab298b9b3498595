"""Retries with backoff, soft time limits, dead letters and their API, on a real worker."""

from __future__ import annotations

import itertools
from typing import Any

from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from tests.support import auth, wait_for, wait_for_state, witness_starts


def submit(client: FlaskClient, job_type: str, payload: dict, tenant: str = "acme", **extra: Any):
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload, **extra}, headers=auth(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["jobId"]


def test_flaky_job_succeeds_on_its_third_attempt(live_client: FlaskClient) -> None:
    # given diag.flaky failing its first two attempts
    job_id = submit(live_client, "diag.flaky", {"failTimes": 2})
    # when the worker runs and retries it, then it succeeds on attempt 3
    doc = wait_for_state(live_client, "acme", job_id, {"succeeded", "dead"}, timeout=60)
    assert doc["state"] == "succeeded"
    assert doc["attempts"] == 3
    assert doc["result"] == {"attempts": 3}
    assert doc["error"] is None


def test_retry_delays_follow_the_capped_backoff(live_client: FlaskClient, redis: Redis) -> None:
    # given a flaky job whose jobType declares backoff=0.4 s, backoff_max=0.8 s, 4 failures
    job_id = submit(live_client, "witness.flaky", {"failTimes": 4})
    # when it runs to success
    doc = wait_for_state(live_client, "acme", job_id, {"succeeded", "dead"}, timeout=60)
    assert doc["state"] == "succeeded" and doc["attempts"] == 5
    # then each wait was at most min(cap, 0.4 * 2**(n-1)) plus scheduling slack, never negative
    times = [s["t"] for s in witness_starts(redis, job_id)]
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1, 2, 3, 4, 5]
    ceilings = [0.4, 0.8, 0.8, 0.8]  # 0.4 * 2**k, capped at 0.8
    slack = 1.5  # a loaded 2-core machine: publish, ETA timer, pool hand-off
    for gap, ceiling in zip([b - a for a, b in itertools.pairwise(times)], ceilings, strict=True):
        assert 0 <= gap <= ceiling + slack, (gap, ceiling)


def test_failing_job_is_dead_lettered_after_max_retries_and_can_be_replayed(
    live_client: FlaskClient, redis: Redis
) -> None:
    # given diag.fail with maxRetries=2
    job_id = submit(live_client, "diag.fail", {}, options={"maxRetries": 2})
    # when it has run out of attempts
    doc = wait_for_state(live_client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
    # then it is dead after exactly 3 attempts, with its last error
    assert doc["state"] == "dead"
    assert doc["attempts"] == 3
    assert doc["options"]["maxRetries"] == 2
    assert doc["error"]["type"] == "RetryableError"
    assert "attempt 3" in doc["error"]["message"]
    # and exactly one dead letter records it
    dead = redis.zrange(keys.tenant_dead_letters("acme"), 0, -1)
    assert dead.count(job_id) == 1
    listed = live_client.get("/v1/dead-letters?jobType=diag.fail&limit=100", headers=auth("acme"))
    assert [j["jobId"] for j in listed.get_json()["items"]].count(job_id) == 1
    one = live_client.get(f"/v1/dead-letters/{job_id}", headers=auth("acme"))
    assert one.status_code == 200 and one.get_json()["error"]["type"] == "RetryableError"

    # and another tenant can neither see, replay nor delete it
    other = live_client.get("/v1/dead-letters?limit=100", headers=auth("globex")).get_json()
    assert job_id not in [j["jobId"] for j in other["items"]]
    for method, path in [
        ("get", f"/v1/dead-letters/{job_id}"),
        ("post", f"/v1/dead-letters/{job_id}/replay"),
        ("delete", f"/v1/dead-letters/{job_id}"),
    ]:
        response = getattr(live_client, method)(path, headers=auth("globex"))
        assert response.status_code == 404, (method, path)
        assert response.mimetype == "application/problem+json"

    # when acme replays it
    replayed = live_client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth("acme"))
    # then it keeps its id, leaves the dead letters and runs a fresh cycle of 3 attempts
    assert replayed.status_code == 202
    assert replayed.get_json()["jobId"] == job_id
    assert replayed.get_json()["replays"] == 1
    wait_for(lambda: redis.zscore(keys.tenant_dead_letters("acme"), job_id) is not None, timeout=60)
    again = live_client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
    assert again["state"] == "dead" and again["attempts"] == 3 and again["replays"] == 1

    # when acme deletes the dead letter, then it is gone from the list but the job is readable
    assert live_client.delete(f"/v1/dead-letters/{job_id}", headers=auth("acme")).status_code == 204
    assert live_client.get(f"/v1/dead-letters/{job_id}", headers=auth("acme")).status_code == 404
    assert live_client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).status_code == 200
    assert live_client.delete(f"/v1/dead-letters/{job_id}", headers=auth("acme")).status_code == 404


def test_dead_letters_page_newest_first_and_bulk_replay_counts_first(live_client: FlaskClient, redis: Redis) -> None:
    # given three dead diag.fail jobs of globex
    ids = [submit(live_client, "diag.fail", {}, "globex", options={"maxRetries": 0}) for _ in range(3)]
    for job_id in ids:
        wait_for_state(live_client, "globex", job_id, {"dead"}, timeout=60)
    # when it pages through its dead letters two at a time
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2&jobType=diag.fail" + (f"&cursor={cursor}" if cursor else "")
        page = live_client.get(f"/v1/dead-letters?{query}", headers=auth("globex")).get_json()
        seen += [j["jobId"] for j in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    # then every one appears once, newest first
    scores = [redis.zscore(keys.tenant_dead_letters("globex"), j) for j in seen]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    assert scores == sorted(scores, reverse=True)
    # when a bulk replay is asked as a dry run, then it counts without replaying
    dry = live_client.post(
        "/v1/dead-letters/replay", json={"jobType": "diag.fail", "dryRun": True}, headers=auth("globex")
    ).get_json()
    assert dry["matched"] >= 3 and dry["replayed"] == 0
    assert live_client.get(f"/v1/jobs/{ids[0]}", headers=auth("globex")).get_json()["state"] == ("dead")
    # when it is done for real, then every matched letter is replayed (and dies again)
    done = live_client.post("/v1/dead-letters/replay", json={"jobType": "diag.fail"}, headers=auth("globex")).get_json()
    assert done["replayed"] == done["matched"] == dry["matched"]
    for job_id in ids:
        doc = wait_for(
            lambda j=job_id: (
                (d := live_client.get(f"/v1/jobs/{j}", headers=auth("globex")).get_json())["replays"] == 1
                and d["state"] == "dead"
                and d
            ),
            timeout=60,
        )
        assert doc["attempts"] == 1


def test_a_bad_cursor_and_options_over_the_caps_are_422(live_client: FlaskClient) -> None:
    for cursor in ("nope", "NaN", "inf:x", "-Infinity"):
        bad = live_client.get(f"/v1/dead-letters?cursor={cursor}", headers=auth("acme"))
        assert bad.status_code == 422 and "cursor" in bad.get_json()["errors"], cursor
    for options, field in [
        ({"maxRetries": 10_000}, "options.maxRetries"),
        ({"timeoutSeconds": 10**6}, "options.timeoutSeconds"),
        ({"delaySeconds": 10**9}, "options.delaySeconds"),
        ({"maxRetries": -1}, "options.maxRetries"),
        ({"delaySeconds": 1, "runAt": "2030-01-01T00:00:00Z"}, "options.delaySeconds"),
        ({"runAt": "2030-01-01T00:00:00"}, "options.runAt"),
    ]:
        response = live_client.post(
            "/v1/jobs", json={"jobType": "diag.echo", "payload": {}, "options": options}, headers=auth("acme")
        )
        assert response.status_code == 422, options
        assert field in response.get_json()["errors"], response.get_json()


def test_a_job_past_its_soft_time_limit_is_retried_then_dead(live_client: FlaskClient, redis: Redis) -> None:
    # given a sleep longer than the job's 1-second timeout, with one retry
    job_id = submit(live_client, "witness.sleep", {"seconds": 4}, options={"timeoutSeconds": 1, "maxRetries": 1})
    # when it runs
    doc = wait_for_state(live_client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
    # then each attempt was stopped by the soft limit (inside the handler), retried, then dead
    assert doc["state"] == "dead"
    assert doc["attempts"] == 2
    assert doc["error"]["type"] == "SoftTimeLimitExceeded"
    assert [s["attempt"] for s in witness_starts(redis, job_id)] == [1, 2]
    assert redis.zscore(keys.tenant_dead_letters("acme"), job_id) is not None
