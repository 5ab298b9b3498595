"""POST /v1/batches answers per job in request order; GET /v1/jobs lists a tenant's own jobs."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import auth, wait_for_state

JOB = {"jobType": "diag.echo", "payload": {"n": 1}}


@pytest.fixture
def announced(redis: Redis) -> None:
    announce(redis, ["diag.echo"], 600)


def test_a_batch_is_answered_per_job_in_request_order(live_client: FlaskClient, redis: Redis) -> None:
    # given a batch mixing good jobs, bad ones and a repeated idempotency key
    key = f"k-{uuid.uuid4()}"
    jobs = [
        {**JOB, "payload": {"i": 0}},
        {"jobType": "has spaces", "payload": {}},
        {**JOB, "payload": {"i": 2}, "idempotencyKey": key},
        {**JOB, "jobType": "no.such.type"},
        {**JOB, "payload": {"i": 2}, "idempotencyKey": key},
        {**JOB, "payload": {"i": 5}, "idempotencyKey": key},
        {"payload": {}},
        {**JOB, "payload": {"i": 7}, "tenantId": "globex"},
    ]
    before = redis.zcard(keys.tenant_jobs("acme"))
    # when it is submitted
    response = live_client.post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
    # then every job has its own answer, in order
    assert response.status_code == 200
    doc = response.get_json()
    items = doc["items"]
    assert [item["status"] for item in items] == [202, 422, 202, 422, 200, 422, 422, 403]
    assert doc["accepted"] == 3 and doc["refused"] == 5
    assert items[0]["job"]["jobType"] == "diag.echo"
    assert "jobType" in items[1]["problem"]["errors"]
    assert items[3]["problem"]["type"].endswith("/unknown-job-type")
    assert items[4]["replayed"] is True
    assert items[4]["job"]["jobId"] == items[2]["job"]["jobId"]
    assert items[5]["problem"]["type"].endswith("/idempotency-key-reused")
    assert items[7]["problem"]["type"].endswith("/tenant-mismatch")
    assert all(name in response.headers for name in ("RateLimit-Limit", "RateLimit-Remaining"))
    # and exactly the two new jobs were created, and they run
    assert redis.zcard(keys.tenant_jobs("acme")) == before + 2
    for item in (items[0], items[2]):
        assert wait_for_state(live_client, "acme", item["job"]["jobId"], {"succeeded"})


def test_the_rate_limit_counts_each_job_of_a_batch(client: FlaskClient, announced: None) -> None:
    # given "batcher" may submit 5 jobs a minute
    response = client.post("/v1/batches", json={"jobs": [JOB] * 8}, headers=auth("batcher"))
    # then the first 5 are admitted and the rest refused, each with its problem
    statuses = [item["status"] for item in response.get_json()["items"]]
    assert statuses == [202] * 5 + [429] * 3
    assert response.get_json()["items"][5]["problem"]["type"].endswith("/rate-limited")


def test_a_batch_over_the_job_cap_is_refused_whole(settings: Settings, redis: Redis, announced: None) -> None:
    client = create_app(replace(settings, batch_max_jobs=3)).test_client()
    before = redis.zcard(keys.tenant_jobs("acme"))
    response = client.post("/v1/batches", json={"jobs": [JOB] * 4}, headers=auth("acme"))
    assert response.status_code == 422
    assert response.get_json()["type"].endswith("/batch-too-large")
    assert redis.zcard(keys.tenant_jobs("acme")) == before


def test_a_batch_item_over_the_payload_cap_is_refused_alone(client: FlaskClient, announced: None) -> None:
    big = {**JOB, "payload": {"x": "y" * 2000}}
    response = client.post("/v1/batches", json={"jobs": [JOB, big]}, headers=auth("small"))
    items = response.get_json()["items"]
    assert [item["status"] for item in items] == [202, 413]


def test_an_empty_or_shapeless_batch_is_422(client: FlaskClient) -> None:
    for body in ({"jobs": []}, {"jobs": {"a": 1}}, {"jobs": [JOB, "not an object"]}, {}):
        response = client.post("/v1/batches", json=body, headers=auth("acme"))
        assert response.status_code == 422
        assert any(field.startswith("jobs") for field in response.get_json()["errors"])


def test_listing_pages_through_the_tenants_own_jobs_newest_first(
    settings: Settings, redis: Redis, announced: None
) -> None:
    # given "lister" has 7 echo jobs and 3 sleep jobs (no worker on its queue: all queued)
    client = create_app(replace(settings, default_queue="t-lister")).test_client()
    announce(redis, ["diag.sleep"], 600)
    created = []
    for i in range(10):
        job_type = "diag.sleep" if i % 3 == 0 and i else "diag.echo"
        body = {"jobType": job_type, "payload": {"i": i}}
        created.append(client.post("/v1/jobs", json=body, headers=auth("lister")).get_json())
    client.post("/v1/jobs", json=JOB, headers=auth("globex"))  # someone else's
    # when the jobs are listed three at a time
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/jobs?{query}", headers=auth("lister")).get_json()
        assert len(page["jobs"]) <= 3
        seen += [job["jobId"] for job in page["jobs"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    # then every one of its jobs appears once, newest first, and no one else's
    assert seen == [job["jobId"] for job in reversed(created)]
    assert pages == 4
    # and filters narrow the list
    sleeps = client.get("/v1/jobs?jobType=diag.sleep", headers=auth("lister")).get_json()
    assert [j["jobId"] for j in sleeps["jobs"]] == [
        j["jobId"] for j in reversed(created) if j["jobType"] == "diag.sleep"
    ]
    queued = client.get("/v1/jobs?state=queued&limit=100", headers=auth("lister")).get_json()
    assert len(queued["jobs"]) == 10
    assert client.get("/v1/jobs?state=succeeded", headers=auth("lister")).get_json()["jobs"] == []
    redis.delete("t-lister")


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "state=nope", "cursor=not-a-cursor", "jobType=a%20b"])
def test_bad_listing_queries_are_422(client: FlaskClient, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth("acme"))
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["errors"]


def test_listing_needs_a_key(client: FlaskClient) -> None:
    assert client.get("/v1/jobs").status_code == 401
