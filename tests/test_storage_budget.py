"""The storage budget: no tenant fills Redis (``max_stored_bytes``), and its counters stay exact.

Against the real private Redis and the real worker: a tenant that fills its budget is
refused (429, nothing consumed) while another is not; a result that does not fit is not
kept; and the counters equal the bytes the records hold after jobs finish, die, are
replayed, forgotten and cancelled (``tests.invariants.stored_bytes_mismatches``).
"""

from __future__ import annotations

from dataclasses import replace

from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.guards.admission import Admission
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from pulse_core.tenants import TenantsConfig
from tests.invariants import backlog_mismatches, stored_bytes_mismatches
from tests.support import auth, wait_for, wait_for_state

#: About 4 KB of payload: a 20,000-byte budget holds four such records, not five.
BIG = {"blob": "x" * 4000}


def test_a_tenant_that_fills_its_budget_is_refused_and_another_is_not(settings: Settings, redis: Redis) -> None:
    # given an API whose queue no worker reads, and tenant budget-a with a 20,000-byte budget
    client = create_app(replace(settings, default_queue="t-storage-budget")).test_client()
    announce(redis, ["diag.echo"], 60)
    tenant = TenantsConfig.load(settings.tenants_file).tenants["budget-a"]
    assert tenant.max_stored_bytes == 20_000
    admission = Admission(redis, idempotency_ttl_seconds=settings.idempotency_ttl_seconds)
    store = JobStore(redis)
    accepted: list[str] = []
    # when it submits 4 KB jobs until one is refused
    refused = None
    for n in range(10):
        body = {"jobType": "diag.echo", "payload": BIG, "idempotencyKey": f"budget-a-{n}"}
        response = client.post("/v1/jobs", json=body, headers=auth("budget-a"))
        if response.status_code != 202:
            refused = response
            break
        accepted.append(response.get_json()["jobId"])
    # then a few fitted and the next was refused with a 429 problem naming the budget
    assert refused is not None and 3 <= len(accepted) <= 4, accepted
    assert refused.status_code == 429
    problem = refused.get_json()
    assert problem["type"] == "/problems/storage-budget-full"
    assert "max_stored_bytes" in problem["detail"] and "20000" in problem["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    # and the refusal consumed nothing: no rate slot, no backlog slot, no record
    pending, remaining = store.pending("budget-a"), admission.status(tenant).remaining
    again = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": BIG}, headers=auth("budget-a"))
    assert again.status_code == 429
    assert store.pending("budget-a") == pending == len(accepted)
    assert admission.status(tenant).remaining == remaining
    # and a job already accepted is still answered by its idempotency key
    replay = client.post(
        "/v1/jobs",
        json={"jobType": "diag.echo", "payload": BIG, "idempotencyKey": "budget-a-0"},
        headers=auth("budget-a"),
    )
    assert replay.status_code == 200 and replay.get_json()["jobId"] == accepted[0]
    # and in a batch the big job is refused on its own while a small one still fits
    batch = client.post(
        "/v1/batches",
        json={"jobs": [{"jobType": "diag.echo", "payload": BIG}, {"jobType": "diag.echo", "payload": {"n": 1}}]},
        headers=auth("budget-a"),
    )
    items = batch.get_json()["items"]
    assert [item["status"] for item in items] == [429, 202]
    assert items[0]["problem"]["type"] == "/problems/storage-budget-full"
    accepted.append(items[1]["job"]["jobId"])
    # and another tenant with the same jobs is not affected
    other = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": BIG}, headers=auth("budget-b"))
    assert other.status_code == 202
    # and the counters are exactly what the records hold
    assert stored_bytes_mismatches(redis, ["budget-a", "budget-b"]) == {}
    held = int(redis.hget(keys.tenant_counts("budget-a"), "held") or 0)
    assert 16_000 < held <= 20_000
    # cleanup: no worker reads this queue
    for job_id in accepted:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("budget-a")).status_code == 200
    assert client.post(f"/v1/jobs/{other.get_json()['jobId']}/cancel", headers=auth("budget-b")).status_code == 200
    assert stored_bytes_mismatches(redis, ["budget-a", "budget-b"]) == {}
    assert int(redis.hget(keys.tenant_counts("budget-a"), "held") or 0) == 0


def test_counters_return_to_their_exact_values_through_every_end_of_a_job(
    live_client: FlaskClient, redis: Redis
) -> None:
    client, tenant = live_client, "budget-flow"
    store = JobStore(redis)

    def exact() -> None:
        assert stored_bytes_mismatches(redis, [tenant]) == {}
        assert tenant not in backlog_mismatches(redis)

    def submit(body: dict) -> str:
        response = client.post("/v1/jobs", json=body, headers=auth(tenant))
        assert response.status_code == 202, response.get_data(as_text=True)
        return str(response.get_json()["jobId"])

    held_before = int(redis.hget(keys.tenant_counts(tenant), "held") or 0)
    # given jobs that succeed: when they finish, their bytes (and their results') leave held
    done = [submit({"jobType": "diag.echo", "payload": {"n": n, "text": "y" * 300}}) for n in range(3)]
    for job_id in done:
        assert wait_for_state(client, tenant, job_id, ["succeeded"])["result"]["n"] is not None
    exact()
    assert int(redis.hget(keys.tenant_counts(tenant), "held") or 0) == held_before
    # given a job that dies: its record persists as a dead letter, so its bytes stay held
    dying = submit({"jobType": "diag.fail", "payload": {"n": 9}})
    wait_for_state(client, tenant, dying, ["dead"], timeout=30)
    exact()
    dead_bytes = int(redis.hget(keys.job(dying), "storedBytes") or 0)
    assert int(redis.hget(keys.tenant_counts(tenant), "held") or 0) == held_before + dead_bytes > held_before
    # when it is replayed and dies again, the counters still match
    assert client.post(f"/v1/dead-letters/{dying}/replay", headers=auth(tenant)).status_code == 202

    def dead_again() -> bool:
        job = store.get(dying)
        return job is not None and job.state.value == "dead" and job.cycle == 1

    wait_for(dead_again, timeout=30)
    exact()
    # when the dead letter is forgotten, its record starts to expire: its bytes leave held
    assert client.delete(f"/v1/dead-letters/{dying}", headers=auth(tenant)).status_code == 204
    exact()
    assert int(redis.hget(keys.tenant_counts(tenant), "held") or 0) == held_before
    # given a scheduled job: cancelled, its bytes leave held
    later = submit({"jobType": "diag.echo", "payload": {"n": 1}, "options": {"delaySeconds": 3600}})
    exact()
    assert client.post(f"/v1/jobs/{later}/cancel", headers=auth(tenant)).status_code == 200
    exact()
    # and what finished is counted as retained, exactly
    assert int(redis.hget(keys.tenant_counts(tenant), "total") or 0) > 0


def test_a_result_over_the_budget_is_not_kept_and_the_job_still_succeeds(
    live_client: FlaskClient, redis: Redis
) -> None:
    # given tenant budget-result with a 4,000-byte budget, and a job echoing 2.5 KB
    client, tenant = live_client, "budget-result"
    body = {"jobType": "diag.echo", "payload": {"blob": "z" * 2500}}
    # when it runs
    response = client.post("/v1/jobs", json=body, headers=auth(tenant))
    assert response.status_code == 202
    doc = wait_for_state(client, tenant, response.get_json()["jobId"], ["succeeded", "dead"])
    # then it succeeded, but its result (record + result > 4,000 bytes) was not kept, and says why
    assert doc["state"] == "succeeded"
    assert doc["result"] is None
    assert doc["error"]["type"] == "ResultNotKept"
    assert "max_stored_bytes" in doc["error"]["message"]
    assert stored_bytes_mismatches(redis, [tenant]) == {}
