"""Submitting a job over HTTP and reading its status, end to end through a real worker."""

from __future__ import annotations

import re
from datetime import datetime

from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from tests.support import auth, wait_for_state, waiting_messages

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def submit(client: FlaskClient, tenant: str = "acme", **body):
    body.setdefault("jobType", "diag.echo")
    body.setdefault("payload", {"hello": "world"})
    return client.post("/v1/jobs", json=body, headers=auth(tenant))


def test_submitted_job_runs_on_a_worker_and_succeeds(live_client: FlaskClient) -> None:
    # given a worker with the diagnostic handlers
    # when a tenant submits a diag.echo job
    response = submit(live_client, payload={"hello": "world", "n": [1, 2]})

    # then it is accepted and queued, with a Location to poll
    assert response.status_code == 202
    doc = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{doc['jobId']}"
    assert doc["state"] == "queued"
    assert doc["tenantId"] == "acme"
    assert doc["jobType"] == "diag.echo"
    assert doc["attempts"] == 0
    assert ISO_UTC.match(doc["createdAt"])
    # and the worker runs it to success with the handler's result
    done = wait_for_state(live_client, "acme", doc["jobId"], {"succeeded", "dead"})
    assert done["state"] == "succeeded"
    assert done["result"] == {"hello": "world", "n": [1, 2]}
    assert done["attempts"] == 1
    assert done["error"] is None
    for field in ("createdAt", "startedAt", "finishedAt"):
        assert ISO_UTC.match(done[field]), field
    started = datetime.fromisoformat(done["startedAt"])
    assert datetime.fromisoformat(done["createdAt"]) <= started
    assert started <= datetime.fromisoformat(done["finishedAt"])


def test_status_document_has_every_documented_field(live_client: FlaskClient) -> None:
    job_id = submit(live_client).get_json()["jobId"]
    doc = live_client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
    assert set(doc) >= {
        "jobId",
        "tenantId",
        "jobType",
        "state",
        "attempts",
        "createdAt",
        "startedAt",
        "finishedAt",
        "result",
        "error",
        "metadata",
    }


def test_trace_id_from_metadata_is_kept(live_client: FlaskClient) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    doc = submit(live_client, metadata={"traceId": trace}).get_json()
    assert doc["traceId"] == trace
    assert doc["metadata"] == {"traceId": trace}


def test_tenant_id_equal_to_the_keys_tenant_is_accepted(live_client: FlaskClient) -> None:
    assert submit(live_client, tenantId="acme").status_code == 202


def test_another_tenants_job_is_indistinguishable_from_a_missing_one(
    live_client: FlaskClient,
) -> None:
    # given a job of acme's
    job_id = submit(live_client, tenant="acme").get_json()["jobId"]
    # when globex asks for it, and for an id that does not exist
    theirs = live_client.get(f"/v1/jobs/{job_id}", headers=auth("globex"))
    missing_id = job_id[:-4] + "0000" if not job_id.endswith("0000") else job_id[:-4] + "1111"
    missing = live_client.get(f"/v1/jobs/{missing_id}", headers=auth("globex"))
    # then both are the same 404 problem, apart from the id echoed in the detail
    assert theirs.status_code == missing.status_code == 404
    assert theirs.mimetype == missing.mimetype == "application/problem+json"
    a, b = theirs.get_json(), missing.get_json()
    assert a["detail"].replace(job_id, "ID") == b["detail"].replace(missing_id, "ID")
    assert {k: v for k, v in a.items() if k != "detail"} == {k: v for k, v in b.items() if k != "detail"}
    # and acme still sees it
    assert live_client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).status_code == 200


def test_refusals_leave_nothing_behind(live_client: FlaskClient, redis: Redis) -> None:
    # given the tenant's job index and the queue as they are
    before_jobs = redis.zcard(keys.tenant_jobs("globex"))
    before_queue = waiting_messages(redis, "pulse")
    # when a batch of bad submissions is refused
    bad = [
        live_client.post("/v1/jobs", data="{nope", headers=auth("globex"), content_type="application/json"),
        live_client.post("/v1/jobs", json={"jobType": "no.such.type", "payload": {}}, headers=auth("globex")),
        live_client.post("/v1/jobs", json={"jobType": "diag.echo"}, headers=auth("globex")),
        live_client.post(
            "/v1/jobs", json={"jobType": "diag.echo", "payload": {}, "tenantId": "acme"}, headers=auth("globex")
        ),
    ]
    # then every one is a 4xx and no job record was written
    assert [r.status_code for r in bad] == [400, 422, 422, 403]
    assert redis.zcard(keys.tenant_jobs("globex")) == before_jobs
    assert waiting_messages(redis, "pulse") <= before_queue
