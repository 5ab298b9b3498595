"""Routing by tenant and jobType, workers by queue, priorities and fairness between tenants."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.cli import tenant_worker_queues
from pulse_core import keys
from pulse_core.broker.celery_app import waiting_lists
from pulse_core.broker.routing import resolve_queue
from pulse_core.guards.execution_limits import needs_tenant
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from pulse_core.tenants import TenantsConfig
from tests.conftest import DIAG_TYPES
from tests.support import (
    WorkerProcess,
    auth,
    bury,
    settings_env,
    wait_for,
    wait_for_state,
    waiting_messages,
    write_tenants_file,
)


def routed(settings: Settings, tmp_path: Path, prefix: str) -> Settings:
    """Settings whose tenants file routes by tenant, by jobType and by tenant x jobType."""
    path = write_tenants_file(
        tmp_path / "tenants.toml",
        tenant_settings={"acme": f'queue = "{prefix}-acme"'},
        extra=f"""
[job_types."diag.sleep"]
queue = "{prefix}-heavy"

[tenants.acme.job_types."diag.sleep"]
queue = "{prefix}-acme-sleep"

[tenants.globex.job_types."diag.echo"]
queue = "{prefix}-globex-echo"
""",
    )
    return replace(settings, tenants_file=path, default_queue=f"{prefix}-shared")


def submit(client: FlaskClient, tenant: str, job_type: str, **body: object) -> dict:
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": {}, **body}, headers=auth(tenant))
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def started(doc: dict) -> datetime:
    return datetime.fromisoformat(doc["startedAt"].replace("Z", "+00:00"))


def test_precedence_tenant_x_job_type_then_job_type_then_tenant_then_shared(settings: Settings, tmp_path: Path) -> None:
    # given the routing tenants file
    config = TenantsConfig.load(routed(settings, tmp_path, "p").require_tenants_file())
    # then each (tenant, jobType) resolves by the documented precedence
    assert resolve_queue(config, "acme", "diag.sleep", "fallback") == "p-acme-sleep"
    assert resolve_queue(config, "globex", "diag.sleep", "fallback") == "p-heavy"
    assert resolve_queue(config, "acme", "diag.echo", "fallback") == "p-acme"
    assert resolve_queue(config, "globex", "diag.echo", "fallback") == "p-globex-echo"
    assert resolve_queue(config, "globex", "diag.fail", "fallback") == "fallback"
    # and a --tenants worker takes the queues the tenants' own settings name
    assert tenant_worker_queues(config, "acme,globex", "fallback") == [
        "p-acme",
        "p-acme-sleep",
        "fallback",
        "p-globex-echo",
    ]


def test_bad_routing_entries_are_refused_naming_them(tmp_path: Path) -> None:
    path = write_tenants_file(tmp_path / "t.toml", tenant_settings={"acme": 'queue = "a/b"'})
    with pytest.raises(Exception, match=r"\[tenants.acme\] queue='a/b'"):
        TenantsConfig.load(path)
    path = write_tenants_file(tmp_path / "t.toml", extra='[job_types."x"]\nqueu = "q"\n')
    with pytest.raises(Exception, match=r'\[job_types."x"\]: unknown setting'):
        TenantsConfig.load(path)
    path = write_tenants_file(tmp_path / "t.toml", extra='[job_types."x"]\nmax_concurrency = 0\n')
    with pytest.raises(Exception, match="max_concurrency=0 must be between"):
        TenantsConfig.load(path)


def test_jobs_land_on_their_routed_queue_and_a_worker_runs_only_its_queue(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given an API with the routing tenants file, and live jobTypes
    routed_settings = routed(settings, tmp_path, "t-route")
    client = create_app(routed_settings).test_client()
    announce(redis, DIAG_TYPES, 600)
    expected = {
        ("acme", "diag.sleep"): "t-route-acme-sleep",
        ("globex", "diag.sleep"): "t-route-heavy",
        ("acme", "diag.echo"): "t-route-acme",
        ("globex", "diag.echo"): "t-route-globex-echo",
        ("globex", "diag.fail"): "t-route-shared",
    }
    # when each tenant submits each jobType
    docs = {}
    for (tenant, job_type), queue in expected.items():
        payload = {"seconds": 0} if job_type == "diag.sleep" else {}
        docs[tenant, job_type] = submit(client, tenant, job_type, payload=payload)
        # then the job document shows the queue, and its message (dispatched at once: the
        # queue is short) waits on that queue, in the one list the dispatcher fills (kombu's step 0)
        assert docs[tenant, job_type]["queue"] == queue
        name = waiting_lists(queue)[0]
        assert name == queue
        assert redis.llen(name) == 1
        assert waiting_messages(redis, queue) == 1
    # when a worker consumes only acme's queue
    worker = WorkerProcess(
        settings_env(routed_settings), tmp_path / "w.log", queues=["t-route-acme"], concurrency=1
    ).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        more = [submit(client, "acme", "diag.echo")["jobId"] for _ in range(3)]
        # then acme's jobs on that queue run
        for job_id in [docs["acme", "diag.echo"]["jobId"], *more]:
            wait_for_state(client, "acme", job_id, {"succeeded"})
        time.sleep(1.5)  # time enough to have taken anything else
    finally:
        worker.stop()
    # and no job of another queue ran: each is still queued, its message still waiting
    for (tenant, job_type), queue in expected.items():
        if queue == "t-route-acme":
            continue
        doc = client.get(f"/v1/jobs/{docs[tenant, job_type]['jobId']}", headers=auth(tenant))
        assert doc.get_json()["state"] == "queued"
        assert waiting_messages(redis, queue) == 1
        for key in redis.scan_iter(match=f"{queue}*"):
            redis.delete(key)


def test_higher_priority_runs_first_on_a_single_process_worker(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a queue kept one message deep, that message already dispatched (a first job)
    local = replace(isolated_settings, dispatch_depth=1)
    client = create_app(local).test_client()
    announce(redis, DIAG_TYPES, 600)
    first = submit(client, "acme", "diag.echo", options={"priority": 0})["jobId"]
    # and jobs waiting behind it lowest priority first, one from each of Redis's four bands
    ids = {p: submit(client, "acme", "diag.echo", options={"priority": p})["jobId"] for p in (0, 2, 5, 9)}
    assert submit(client, "acme", "diag.echo")["options"]["priority"] == 5  # the default
    bad = client.post(
        "/v1/jobs",
        json={"jobType": "diag.echo", "payload": {}, "options": {"priority": 10}},
        headers=auth("acme"),
    )
    assert bad.status_code == 422 and "priority" in bad.get_data(as_text=True)
    # when a one-process worker starts on the queue
    worker = WorkerProcess(
        settings_env(local),
        tmp_path / "w.log",
        queues=[local.default_queue],
        concurrency=1,
    ).start()
    try:
        docs = {p: wait_for_state(client, "acme", job_id, {"succeeded"}) for p, job_id in ids.items()}
        first_doc = wait_for_state(client, "acme", first, {"succeeded"})
    finally:
        worker.stop()
    # then the waiting ones started highest priority first, after the one already dispatched
    order = sorted(docs, key=lambda p: started(docs[p]))
    assert order == [9, 5, 2, 0]
    assert started(first_doc) < started(docs[9])
    assert docs[9]["options"]["priority"] == 9


def test_a_flood_from_one_tenant_does_not_hold_back_another_on_a_shared_queue(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker on a fresh shared queue
    client = create_app(isolated_settings).test_client()
    worker = WorkerProcess(
        settings_env(isolated_settings),
        tmp_path / "w.log",
        queues=[isolated_settings.default_queue],
        concurrency=2,
    ).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # when tenant A queues a backlog of 300 jobs first, then tenant B submits 3
        flood = [{"jobType": "diag.sleep", "payload": {"seconds": 0.03}}] * 300
        answer = client.post("/v1/batches", json={"jobs": flood}, headers=auth("acme"))
        assert answer.get_json()["accepted"] == 300
        a_ids = [item["job"]["jobId"] for item in answer.get_json()["items"]]
        b_ids = [submit(client, "globex", "diag.echo")["jobId"] for _ in range(3)]
        # then B's jobs are done while most of A's backlog still waits
        b_docs = [wait_for_state(client, "globex", j, {"succeeded"}, timeout=60) for j in b_ids]
        a_left = sum(client.get(f"/v1/jobs/{j}", headers=auth("acme")).get_json()["state"] == "queued" for j in a_ids)
        assert a_left > 100, f"only {a_left} of A's 300 jobs were still queued"
        # and every one of A's jobs still runs
        a_docs = [wait_for_state(client, "acme", j, {"succeeded"}, timeout=120) for j in a_ids]
    finally:
        worker.stop()
    a_starts = sorted(started(d) for d in a_docs)
    assert max(started(d) for d in b_docs) < a_starts[200]


def test_a_priority_9_flood_delays_another_tenants_job_by_a_few_dispatches_only(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a shared queue kept 2 messages deep
    local = replace(isolated_settings, dispatch_depth=2)
    client = create_app(local).test_client()
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[local.default_queue], concurrency=1).start()
    a_ids: list[str] = []
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # when tenant A floods 300 jobs at priority 9
        flood = [{"jobType": "diag.sleep", "payload": {"seconds": 0.05}, "options": {"priority": 9}}] * 300
        answer = client.post("/v1/batches", json={"jobs": flood}, headers=auth("acme"))
        assert answer.get_json()["accepted"] == 300
        a_ids = [item["job"]["jobId"] for item in answer.get_json()["items"]]
        wait_for_state(client, "acme", a_ids[3], {"succeeded"}, timeout=60)
        # and, while it drains, tenant B submits one job at the default priority
        b_id = submit(client, "globex", "diag.echo")["jobId"]
        b_queued = datetime.now(UTC)  # its admission answered: it waits in its ready set
        b_doc = wait_for_state(client, "globex", b_id, {"succeeded"}, 60)
        # then B's job started after at most 3 of A's jobs started after B was queued:
        # the 2 already on the queue and the one running
        a_docs = [client.get(f"/v1/jobs/{j}", headers=auth("acme")).get_json() for j in a_ids]
        ahead = [d for d in a_docs if d.get("startedAt") and b_queued < started(d) < started(b_doc)]
        assert len(ahead) <= 3, f"{len(ahead)} of A's jobs started before B's"
        # and most of A's flood still waits
        assert sum(d["state"] == "queued" for d in a_docs) > 200
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()


def test_a_tenants_cancelled_backlog_does_not_hold_back_another_tenants_job(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a shared queue kept one message deep, busy with a third
    # tenant's 8-second job, and another of them on the queue behind it
    local = replace(isolated_settings, dispatch_depth=1)
    client = create_app(local).test_client()
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[local.default_queue], concurrency=1).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        busy = [submit(client, "sprinter", "diag.sleep", payload={"seconds": 8})["jobId"] for _ in range(2)]
        wait_for_state(client, "sprinter", busy[0], {"running"}, timeout=30)
        # when tenant A queues 2,000 jobs meanwhile (they wait in its ready set, none dispatched
        # yet) and cancels every one of them
        a_ids: list[str] = []
        for _ in range(4):
            batch = {"jobs": [{"jobType": "diag.echo", "payload": {}}] * 500}
            answer = client.post("/v1/batches", json=batch, headers=auth("acme"))
            a_ids += [item["job"]["jobId"] for item in answer.get_json()["items"] if "job" in item]
            time.sleep(0.5)  # within A's rate limit (1,000 a second)
        assert len(a_ids) >= 1900
        for job_id in a_ids:
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme")).status_code == 200
        # (then nothing of them stays waiting: no worker need ever come to dispatch them away)
        assert redis.zcard(keys.ready(local.default_queue, "acme")) == 0
        # and tenant B then submits one job, while the first of the busy jobs still runs
        b_id = submit(client, "globex", "diag.echo")["jobId"]
        submitted = time.monotonic()
        assert client.get(f"/v1/jobs/{busy[0]}", headers=auth("sprinter")).get_json()["state"] == "running"
        # then B's job runs once the two busy jobs have (at most 16 s), not once the dispatcher
        # has worked through A's cancelled jobs, 64 a second
        b_doc = wait_for_state(client, "globex", b_id, {"succeeded"}, timeout=25)
        assert b_doc["state"] == "succeeded" and time.monotonic() - submitted < 20
    finally:
        worker.stop()


def test_a_tenants_delayed_jobs_due_at_once_do_not_hold_back_another_tenants_job(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a shared queue
    client = create_app(isolated_settings).test_client()
    queue = isolated_settings.default_queue
    worker = WorkerProcess(settings_env(isolated_settings), tmp_path / "w.log", queues=[queue], concurrency=1).start()
    a_ids: list[str] = []
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # when tenant A has 1,000 jobs due at the same instant, a few seconds on
        run_at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat().replace("+00:00", "Z")
        body = {"jobType": "diag.echo", "payload": {}, "options": {"runAt": run_at}}
        while len(a_ids) < 1000:  # (within A's rate limit of 1,000 a second)
            answer = client.post("/v1/batches", json={"jobs": [body] * 250}, headers=auth("acme")).get_json()
            a_ids += [item["job"]["jobId"] for item in answer["items"] if "job" in item]
        # and tenant B submits one job once they are due and the first of them has started
        wait_for(lambda: any(d.get("startedAt") for d in _docs(client, "acme", a_ids[:50])), timeout=30)
        b_id = submit(client, "globex", "diag.echo")["jobId"]
        b_queued = datetime.now(UTC)
        b_doc = wait_for_state(client, "globex", b_id, {"succeeded"}, timeout=120)
        # then B's job starts after a few of A's only, as it would had A submitted them all now
        # (tenants take turns: no volume a tenant sends holds another back beyond a small bound)
        ahead = [
            d for d in _docs(client, "acme", a_ids) if d.get("startedAt") and b_queued < started(d) < started(b_doc)
        ]
        assert len(ahead) <= 5, f"{len(ahead)} of A's jobs started after B's was queued and before it"
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()


def _docs(client: FlaskClient, tenant: str, job_ids: list[str]) -> list[dict]:
    return [client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).get_json() for job_id in job_ids]


def test_a_worker_asks_for_a_jobs_tenant_only_where_some_tenant_limits_its_jobtype(tmp_path: Path) -> None:
    # given a tenants file where acme limits its own "x.rate" and globex its own "x.slots"
    path = write_tenants_file(
        tmp_path / "t.toml",
        extra='[tenants.acme.job_types."x.rate"]\nrate_limit = "1/second"\n'
        '[tenants.globex.job_types."x.slots"]\nmax_concurrency = 2\n',
    )
    # when a worker asks which jobTypes need the job's tenant for their limits
    config = TenantsConfig.load(path)
    # then exactly those two do, and any other does not
    assert [needs_tenant(config, t) for t in ("x.rate", "x.slots", "x.other")] == [True, True, False]
    assert not needs_tenant(None, "x.rate")
    # and once any tenant has a running cap, every jobType does
    capped = write_tenants_file(tmp_path / "capped.toml", tenant_settings={"globex": "max_running = 3"})
    assert needs_tenant(TenantsConfig.load(capped), "x.other")


def test_weights_and_running_caps_are_read_and_bad_ones_refused_naming_them(tmp_path: Path) -> None:
    # given a tenants file giving acme twice globex's share and a running cap
    path = write_tenants_file(tmp_path / "t.toml", tenant_settings={"acme": "weight = 2\nmax_running = 3"})
    config = TenantsConfig.load(path)
    # then they are read, and the others keep the defaults
    assert (config.tenants["acme"].weight, config.tenants["acme"].max_running) == (2.0, 3)
    assert (config.tenants["globex"].weight, config.tenants["globex"].max_running) == (1.0, None)
    # and a bad one stops the load, naming it
    for line, message in (("weight = 0", "weight=0 must be above 0"), ("max_running = 0", "max_running=0 must be")):
        bad = write_tenants_file(tmp_path / "bad.toml", tenant_settings={"acme": line})
        with pytest.raises(Exception, match=rf"\[tenants.acme\] {message}"):
            TenantsConfig.load(bad)


def _dead_letters(store: JobStore, tenant: str, queue: str, n: int) -> list[str]:
    """``n`` dead diag.sleep jobs of ``tenant`` on ``queue`` at priority 9, each sleeping 0.05 s when run."""
    return bury(
        store,
        (
            Job(
                job_id=new_job_id(),
                tenant_id=tenant,
                job_type="diag.sleep",
                queue=queue,
                payload={"seconds": 0.05},
                priority=9,
                created_at=utc_now(),
            )
            for _ in range(n)
        ),
    )


def test_a_bulk_replay_of_many_dead_letters_does_not_hold_back_another_tenants_job(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given tenant A with 300 dead letters of priority 9 on a shared queue kept 2 messages deep, and a
    # one-process worker on it (found in review)
    local = replace(isolated_settings, dispatch_depth=2)
    client = create_app(local).test_client()
    store = JobStore(redis)
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    a_ids = _dead_letters(store, "acme", local.default_queue, 300)
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[local.default_queue], concurrency=1).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # when A replays them all in one call (within its rate limit)
        replay = {"dryRun": False, "jobType": "diag.sleep", "deadAfter": since}
        answer = client.post("/v1/dead-letters/replay", json=replay, headers=auth("acme")).get_json()
        assert answer["replayed"] == 300 and set(answer["jobIds"]) == set(a_ids)
        first = answer["jobIds"][:5]  # replayed first
        wait_for(lambda: any(d.get("startedAt") for d in _docs(client, "acme", first)), timeout=30)
        # and tenant B then submits one job
        b_id = submit(client, "globex", "diag.echo")["jobId"]
        b_queued = datetime.now(UTC)
        b_doc = wait_for_state(client, "globex", b_id, {"succeeded"}, timeout=120)
        # then B's job starts after a few of A's only (the ones on the queue and the one running),
        # as it would had A submitted them all now: a replay is a tenant's volume like any other
        ahead = [
            d for d in _docs(client, "acme", a_ids) if d.get("startedAt") and b_queued < started(d) < started(b_doc)
        ]
        assert len(ahead) <= 5, f"{len(ahead)} of A's replayed jobs started after B's was queued and before it"
        # and every replayed job still runs once
        a_docs = [wait_for_state(client, "acme", j, {"succeeded"}, timeout=120) for j in a_ids]
        assert {d["attempts"] for d in a_docs} == {1}
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()
