"""Listing reads only what it returns: the fields of the job documents on the page (never a
payload), only as many records as the page needs, and a bounded number of entries when a
filter leaves the page short. Measured on what Redis itself served (``INFO commandstats``,
``total_net_output_bytes``) of a private Redis nobody else talks to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.jobs import DOCUMENT_FIELDS, Job, JobState, new_job_id, new_trace_id, utc_now
from pulse_core.redis_client import connect
from pulse_core.store import listing
from pulse_core.store.job_store import JobStore
from tests.faults import private_settings
from tests.support import auth, write_tenants_file

#: Each job's payload: far more than a page of documents, so reading one would show.
PAYLOAD_BYTES = 200_000
BIG_JOBS = 12


@pytest.fixture(scope="module")
def redis_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("listing-reads"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(redis_served: EmbeddedRedis) -> Redis:
    return connect(redis_served.url)


@pytest.fixture(scope="module")
def client(redis_served: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    tenants = write_tenants_file(tmp_path_factory.mktemp("listing-reads-config") / "tenants.toml")
    return create_app(private_settings(redis_served.url, tenants)).test_client()


def _job(tenant: str, payload: Any) -> Job:
    return Job(
        job_id=new_job_id(),
        tenant_id=tenant,
        job_type="diag.echo",
        queue="t-listing-reads",
        payload=payload,
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )


@pytest.fixture(scope="module")
def big_jobs(store: Redis) -> list[Job]:
    """``BIG_JOBS`` jobs of acme with a large payload; the older half are dead letters."""
    jobs = JobStore(store)
    made = []
    for n in range(BIG_JOBS):
        job = _job("acme", {"n": n, "blob": "x" * PAYLOAD_BYTES})
        jobs.create(job)
        if n < BIG_JOBS // 2:
            assert jobs.finalize(job, JobState.DEAD, from_="waiting")
        made.append(job)
    return made


def served(redis: Redis) -> dict[str, int]:
    """What Redis has served so far: calls per command, and bytes written to clients."""
    stats: dict[str, Any] = redis.info("commandstats")  # type: ignore[assignment]
    counts = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    counts["bytes out"] = int(redis.info("stats")["total_net_output_bytes"])
    return counts


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


def listed(client: FlaskClient, store: Redis, path: str) -> tuple[dict[str, Any], dict[str, int]]:
    before = served(store)
    response = client.get(path, headers=auth("acme"))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json(), delta(before, served(store))


@pytest.mark.usefixtures("big_jobs")
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
def test_a_page_of_one_reads_one_record_and_no_payload(client: FlaskClient, store: Redis, path: str) -> None:
    # given jobs (and dead letters) whose payloads are 200 kB each
    # when a page of one is listed
    page, reads = listed(client, store, f"{path}?limit=1")
    # then one record was read, by the fields of its document only
    assert len(page["items"]) == 1 and page["nextCursor"]
    assert reads.get("hmget") == 1, reads
    assert "hgetall" not in reads and "hget" not in reads, reads
    # and no payload left Redis: far less than one payload was served in all
    assert reads["bytes out"] < PAYLOAD_BYTES // 10, reads


@pytest.mark.usefixtures("big_jobs")
def test_a_page_reads_as_many_records_as_it_returns(client: FlaskClient, store: Redis) -> None:
    # given more jobs than a page holds; when a page of five is listed
    page, reads = listed(client, store, "/v1/jobs?limit=5")
    # then five records are read (not a batch of 200), in one index read, and no payload
    assert len(page["items"]) == 5
    assert reads.get("hmget") == 5 and reads.get("zrevrangebyscore") == 1, reads
    assert reads["bytes out"] < PAYLOAD_BYTES // 10, reads


def test_a_filter_that_matches_nothing_examines_a_bounded_number_of_entries(client: FlaskClient, store: Redis) -> None:
    # given a tenant with more jobs than one call may examine, none of them succeeded
    jobs = JobStore(store)
    for n in range(260):
        jobs.create(_job("globex", {"n": n}))
    # when its succeeded jobs are listed a page of one at a time
    before = served(store)
    response = client.get("/v1/jobs?limit=1&state=succeeded", headers=auth("globex"))
    reads = delta(before, served(store))
    # then the call examined at most its budget (10 x limit + one batch), answered a short
    # page, and gave a cursor to go on from
    assert response.status_code == 200
    page = response.get_json()
    assert page["items"] == [] and page["nextCursor"]
    assert reads.get("hmget") == 10 * 1 + listing.BATCH, reads
    # and going on from that cursor examines the rest, and ends
    response = client.get(f"/v1/jobs?limit=1&state=succeeded&cursor={page['nextCursor']}", headers=auth("globex"))
    assert response.get_json() == {"items": [], "jobs": [], "nextCursor": None}


def test_the_document_fields_give_the_whole_document() -> None:
    # given a job with every field of its record set
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="diag.echo",
        queue="q",
        payload={"big": "x" * 100},
        metadata={"m": 1},
        trace_id=new_trace_id(),
        created_at=utc_now(),
        started_at=utc_now(),
        finished_at=utc_now(),
        state=JobState.DEAD,
        attempts=3,
        result={"r": 1},
        error={"type": "E", "message": "m"},
        max_retries=2,
        timeout_seconds=30,
        due_at=1_900_000_000.5,
        cycle=2,
        cancel_requested=True,
        priority=7,
        ready_at=1_900_000_000.0,
        handler_version=4,
    )
    stored = job.to_redis()
    # then the document fields are every stored field but the payload and bookkeeping
    assert set(DOCUMENT_FIELDS) == set(stored) - {"payload", "v", "readyAt"}
    # and the document built from them alone is the document built from the whole record
    listed_only = {name: value for name, value in stored.items() if name in DOCUMENT_FIELDS}
    assert Job.from_redis(listed_only).document() == Job.from_redis(stored).document()
