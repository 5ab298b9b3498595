"""One listing for jobs and dead letters: a total, stable order, one opaque cursor, one page shape."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from pulse_core.errors import InvalidParameter
from pulse_core.jobs import Job, JobState, new_job_id, new_trace_id, utc_now
from pulse_core.store import listing
from pulse_core.store.dead_letters import DeadLetters
from pulse_core.store.job_store import JobStore
from pulse_core.store.listing import Position, decode_cursor, encode_cursor
from tests.support import auth


def _job(tenant: str, created_at: str) -> Job:
    return Job(
        job_id=new_job_id(),
        tenant_id=tenant,
        job_type="diag.echo",
        queue="t-listing-nobody",
        trace_id=new_trace_id(),
        created_at=created_at,
    )


def _all_pages(client: FlaskClient, path: str, tenant: str, limit: int) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(f"{path}?{query}", headers=auth(tenant))
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        assert set(page) >= {"items", "nextCursor"}
        seen += [job["jobId"] for job in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            return seen, pages


def test_jobs_created_in_the_same_millisecond_list_newest_first(client: FlaskClient, redis: Redis) -> None:
    # given 25 jobs of one tenant, all stamped with the same millisecond
    store, moment = JobStore(redis), utc_now()
    created = [_job("ties", moment) for _ in range(25)]
    for job in created:
        store.create(job)
    # when they are listed four at a time, then they come back in reverse order of creation
    seen, pages = _all_pages(client, "/v1/jobs", "ties", 4)
    assert seen == [job.job_id for job in reversed(created)]
    assert pages == 7
    # and the page repeats its items under the older name ``jobs``
    page = client.get("/v1/jobs?limit=2", headers=auth("ties")).get_json()
    assert page["jobs"] == page["items"]
    for job in created:  # and they end, so no later test's sweep finds them
        assert store.finalize(job, JobState.CANCELLED, from_="waiting")


def test_dead_letters_that_die_in_one_millisecond_list_newest_first(client: FlaskClient, redis: Redis) -> None:
    # given jobs that die one after the other, many within one millisecond
    store = JobStore(redis)
    dead = [_job("dead-ties", utc_now()) for _ in range(40)]
    for job in dead:
        store.create(job)
    for job in dead:
        assert store.finalize(job, JobState.DEAD, from_="waiting")
    # and a run of dead letters written with one and the same time of death
    key = keys.tenant_dead_letters("dead-ties")
    score = redis.zrevrange(key, 0, 0, withscores=True)[0][1]
    same = [_job("dead-ties", utc_now()) for _ in range(10)]
    for job in same:
        store.create(job)
        store.finalize(job, JobState.DEAD, from_="waiting")
        redis.zrem(key, job.job_id)
    for job in same:
        listing.add(redis, key, score, job.job_id)
    # when the dead letters are listed three at a time
    seen, _ = _all_pages(client, "/v1/dead-letters", "dead-ties", 3)
    # then they come back in reverse order of death, each once
    assert seen == [job.job_id for job in reversed(dead + same)]
    for job in dead + same:
        DeadLetters(redis, store).delete("dead-ties", job.job_id)


def test_a_page_of_dead_letters_that_share_one_score_pages_to_the_end(client: FlaskClient, redis: Redis) -> None:
    # given 230 dead letters written (as before tie-breaking, or by hand) with one score
    store, tenant = JobStore(redis), "dead-ties"
    key = keys.tenant_dead_letters(tenant)
    jobs = [_job(tenant, utc_now()) for _ in range(230)]
    for job in jobs:
        store.create(job)
        store.finalize(job, JobState.DEAD, from_="waiting")
    redis.zadd(key, {job.job_id: 1_700_000_000_000 for job in jobs})
    # when they are listed 20 and then 100 at a time
    for limit in (20, 100):
        seen, pages = _all_pages(client, "/v1/dead-letters", tenant, limit)
        # then every one appears exactly once, in the index's own order
        assert len(seen) == len(set(seen)) == 230
        assert seen == redis.zrevrange(key, 0, -1)
        assert pages == -(-230 // limit)
    for job in jobs:
        DeadLetters(redis, store).delete(tenant, job.job_id)


@pytest.mark.parametrize(
    "position",
    [
        Position(1_764_225_174_123.0, b"4a1c7a0e-0d5e-4c55-9a44-3b8f2a2c1d11"),
        Position(1_764_225_174_123 + 3 / 1024, b"x"),
        Position(0.0, "jöb".encode()),
    ],
)
def test_a_cursor_round_trips_and_matches_the_documented_pattern(position: Position) -> None:
    cursor = encode_cursor(position)
    assert re.fullmatch(listing.CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor) == position


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
@pytest.mark.parametrize("cursor", ["not-a-cursor", "ABCDEF0123456789ABCD", "00", "0" * 401])
def test_a_cursor_not_of_the_documented_shape_is_a_422_naming_cursor(
    client: FlaskClient, path: str, cursor: str
) -> None:
    response = client.get(f"{path}?cursor={cursor}", headers=auth("acme"))
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert "cursor" in response.get_json()["errors"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
def test_any_cursor_of_the_documented_shape_is_answered(client: FlaskClient, path: str) -> None:
    # given a cursor this API never handed out, but of the documented shape
    invented = "ff" * 8 + "7a" * 3
    # when it is used, then the answer is a page (of whatever comes after that position)
    response = client.get(f"{path}?cursor={invented}", headers=auth("acme"))
    assert response.status_code == 200
    assert set(response.get_json()) >= {"items", "nextCursor"}


def test_the_openapi_document_describes_the_cursor_and_one_page_shape(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    for path in ("/v1/jobs", "/v1/dead-letters"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert params["cursor"]["schema"]["pattern"] == listing.CURSOR_PATTERN
    schemas = spec["components"]["schemas"]
    for name in ("JobList", "DeadLetterPage"):
        assert {"items", "nextCursor"} <= set(schemas[name]["required"])


@pytest.mark.parametrize("cursor", ["", "zz" * 10, "AB" * 10, "00" * 8, "0" * 19])
def test_a_cursor_off_the_pattern_is_refused_naming_cursor_in_core_too(cursor: str) -> None:
    assert not re.fullmatch(listing.CURSOR_PATTERN, cursor)
    with pytest.raises(InvalidParameter) as refused:
        decode_cursor(cursor)
    assert refused.value.field == "cursor"
