"""Faults on the API side and at the end of an attempt, injected for real: a Redis that refuses
writes (``CONFIG SET maxmemory``) while a dead letter is replayed or a 202 job's receiver calls
``/complete``; a Redis that holds every write (``CLIENT PAUSE WRITE``) while batches are
submitted, or while a worker whose handler just returned is SIGKILLed before its outcome lands.

Each answer is a 2xx or a problem document (4xx, or 503 for Redis refusing), never a 500;
nothing is left half done (the record, the watch set, the dead letters and the backlog count
agree); once Redis takes writes again, every job answered 2xx reaches a final state with each
attempt's handler started once (``tests.faults.assert_invariants``)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.lua_scripts import source
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from tests.faults import RedisProxy, api_through, assert_invariants
from tests.invariants import backlog_mismatches, stored_bytes_mismatches
from tests.support import (
    WorkerProcess,
    auth,
    bury,
    handed_off,
    settings_env,
    wait_for,
    witness_starts,
)

QUEUE = "api-faults"
#: How long the API's Redis client waits for an answer here (10 s in production).
SOCKET_TIMEOUT_SECONDS = 2.0
#: A replayed job whose parking failed is published by the sweep after this (60 s by default).
QUEUED_CHECK_SECONDS = 3.0


def _sha(package: str, name: str) -> str:
    return hashlib.sha1(source(package, name).encode()).hexdigest()


READMIT_SHA = _sha("pulse_core.guards", "readmit")
PARK_SHA = _sha("pulse_core.guards", "park_due")
FINALIZE_SHA = _sha("pulse_core.store", "finalize")
ADMIT_BATCH_SHA = _sha("pulse_core.guards", "admit_batch")


#: Settings of the private Redis (``tests.fault_fixtures.direct``) beyond the default queue.
PRIVATE_SETTINGS = {"queued_check_seconds": QUEUED_CHECK_SECONDS}


@pytest.fixture(scope="module", autouse=True)
def _scripts_loaded(store: Redis) -> None:
    """Loaded: each call is one EVALSHA that runs (a fault armed for its SHA finds it)."""
    for package, name in [
        ("pulse_core.guards", "readmit"),
        ("pulse_core.guards", "admit_batch"),
        ("pulse_core.guards", "park_due"),
        ("pulse_core.store", "finalize"),
        ("pulse_core.store", "mark_dead_letter"),
        ("pulse_core.http_handlers", "check_attempt"),
    ]:
        store.script_load(source(package, name))


@pytest.fixture(scope="module")
def api(direct: Settings, proxy: RedisProxy, store: Redis) -> Flask:
    """The API, reaching Redis only through the proxy, answered within 2 s or retried."""
    announce(store, ["witness.sleep"], 3600)  # as a live worker would
    app = api_through(direct, proxy, socket_timeout=SOCKET_TIMEOUT_SECONDS)
    return app


@pytest.fixture
def client(api: Flask) -> FlaskClient:
    return api.test_client()


@pytest.fixture
def memory_restored(store: Redis) -> Iterator[None]:
    yield
    store.config_set("maxmemory", "0")


def _run_queue(direct: Settings, store: Redis, client: FlaskClient, log: Path, accepted: list[str]) -> None:
    worker = WorkerProcess(settings_env(direct), log, queues=[QUEUE], concurrency=1).start()
    try:
        worker.wait_ready(store, ["witness.sleep"])
        assert_invariants(store, client, accepted, timeout=60)
    finally:
        worker.stop()


def _dead_letters(store: Redis, tenant: str, n: int) -> list[str]:
    jobs = (
        Job(
            job_id=new_job_id(),
            tenant_id=tenant,
            job_type="witness.sleep",
            queue=QUEUE,
            payload={"seconds": 0},
            created_at=utc_now(),
        )
        for _ in range(n)
    )
    return bury(JobStore(store), jobs)


def _out_of_memory_once_delayed(proxy: RedisProxy, store: Redis) -> threading.Thread:
    """Once the proxy starts holding back the armed request, Redis runs out of memory: that
    request reaches a Redis that refuses every write."""

    def fill() -> None:
        wait_for(lambda: proxy.delays_left() == 0, timeout=30, interval=0.01)
        time.sleep(0.3)  # what went ahead of the held request has run
        store.config_set("maxmemory", "1")

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    return thread


def _is_problem(response: Any, status: int) -> bool:
    return response.status_code == status and response.content_type.startswith("application/problem+json")


# --- out of memory while replaying ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("memory_restored")
def test_a_bulk_replay_cut_short_by_a_full_redis_answers_the_jobs_it_replayed(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a tenant with 3 dead letters, and Redis that runs out of memory once the first
    # has been replayed (the second replay's script reaches a Redis refusing writes)
    ids = _dead_letters(store, "globex", 3)
    proxy.delay(READMIT_SHA, 0.0)
    proxy.delay(READMIT_SHA, 1.5)
    filler = _out_of_memory_once_delayed(proxy, store)
    # when it replays them all at once
    response = client.post("/v1/dead-letters/replay", json={"dryRun": False}, headers=auth("globex"))
    filler.join(10)
    store.config_set("maxmemory", "0")
    # then the answer names the one job replayed (a 503 would say nothing was, and the client
    # could never learn which was queued again: it is no longer a dead letter)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["matched"], body["replayed"]) == (3, 1)
    (replayed,) = body["jobIds"]
    assert store.hget(keys.job(replayed), "state") == "queued"
    assert store.zscore(keys.WATCH, replayed) is not None
    # and the others are dead letters as they were, the backlog count exact
    for job_id in set(ids) - {replayed}:
        assert store.hget(keys.job(job_id), "state") == "dead"
        assert store.zscore(keys.tenant_dead_letters("globex"), job_id) is not None
        assert store.zscore(keys.WATCH, job_id) is None
    assert backlog_mismatches(store) == {}
    # when Redis takes writes again and the client replays the rest
    rest = client.post("/v1/dead-letters/replay", json={"dryRun": False}, headers=auth("globex"))
    assert rest.status_code == 200, rest.get_data(as_text=True)
    assert set(rest.get_json()["jobIds"]) == set(ids) - {replayed}
    # then every replayed job runs once and succeeds
    _run_queue(direct, store, client, tmp_path / "worker.log", ids)
    assert all(store.hget(keys.job(job_id), "state") == "succeeded" for job_id in ids)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("memory_restored")
def test_a_replay_refused_by_a_full_redis_is_a_503_that_changes_nothing(
    client: FlaskClient, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a dead letter and a Redis that refuses every write
    (job_id,) = _dead_letters(store, "acme", 1)
    before = store.hgetall(keys.job(job_id))
    store.config_set("maxmemory", "1")
    # when the tenant replays it, one and in bulk
    answers = [
        client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth("acme")),
        client.post("/v1/dead-letters/replay", json={"dryRun": False}, headers=auth("acme")),
    ]
    # then each answer is a 503 problem document that says to retry, and nothing changed
    for answer in answers:
        assert _is_problem(answer, 503), answer.get_data(as_text=True)
        assert answer.headers.get("Retry-After")
    assert store.hgetall(keys.job(job_id)) == before
    assert store.zscore(keys.tenant_dead_letters("acme"), job_id) is not None
    assert store.zscore(keys.WATCH, job_id) is None
    assert backlog_mismatches(store) == {}
    # when Redis takes writes again, the replay is answered 202 and the job runs once
    store.config_set("maxmemory", "0")
    assert client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth("acme")).status_code == 202
    _run_queue(direct, store, client, tmp_path / "worker.log", [job_id])
    assert store.hget(keys.job(job_id), "state") == "succeeded"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("memory_restored")
def test_a_replay_whose_parking_a_full_redis_refused_is_published_by_the_sweep(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a dead letter, and Redis that runs out of memory after the replay script ran,
    # while the replayed job's message is being parked
    (job_id,) = _dead_letters(store, "acme", 1)
    proxy.delay(PARK_SHA, 1.5)
    filler = _out_of_memory_once_delayed(proxy, store)
    # when the tenant replays it
    response = client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth("acme"))
    filler.join(10)
    # then the answer is a 202: the job is queued again and watched, though it has no message
    assert response.status_code == 202, response.get_data(as_text=True)
    assert store.hget(keys.job(job_id), "state") == "queued"
    assert store.zscore(keys.WATCH, job_id) is not None
    assert store.zscore(keys.tenant_dead_letters("acme"), job_id) is None
    # when Redis takes writes again, then the sweep publishes it and it runs once
    store.config_set("maxmemory", "0")
    _run_queue(direct, store, client, tmp_path / "worker.log", [job_id])
    assert store.hget(keys.job(job_id), "state") == "succeeded"


# --- out of memory while a 202 job's receiver completes it ------------------------------


def _handed_off(store: Redis, tenant: str = "acme") -> tuple[Job, str]:
    """A running ``witness.sleep`` attempt whose receiver answered 202 (handed off), and its token."""
    job = Job(
        job_id=new_job_id(),
        tenant_id=tenant,
        job_type="witness.sleep",
        queue=QUEUE,
        payload={"seconds": 0},
        created_at=utc_now(),
        max_retries=1,
    )
    return handed_off(store, job)


#: name -> the completion's body, the script Redis fills up in front of ('' from the start),
#: and the state the job ends in once the completion is sent again.
COMPLETIONS = {
    "result, full from the start": ({"result": {"rows": 1}}, "", "succeeded"),
    "final error, full between its two scripts": ({"error": "bad", "retryable": False}, FINALIZE_SHA, "dead"),
}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("memory_restored")
@pytest.mark.parametrize(("body", "full_before", "ends"), list(COMPLETIONS.values()), ids=list(COMPLETIONS))
def test_a_completion_refused_by_a_full_redis_is_a_503_and_a_resend_ends_the_job(
    client: FlaskClient, proxy: RedisProxy, store: Redis, body: dict[str, Any], full_before: str, ends: str
) -> None:
    # given a handed-off attempt, and a Redis that refuses writes when the completion reaches it
    job, token = _handed_off(store)
    headers = {"Authorization": f"Bearer {token}"}
    filler = None
    if full_before:
        proxy.delay(full_before, 1.5)
        filler = _out_of_memory_once_delayed(proxy, store)
    else:
        store.config_set("maxmemory", "1")
    # when the receiver completes it
    refused = client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers=headers)
    if filler is not None:
        filler.join(10)
    # then the answer is a 503 problem document, and the attempt is still running, still its token's
    assert _is_problem(refused, 503), refused.get_data(as_text=True)
    assert store.hget(keys.job(job.job_id), "state") == "running"
    assert store.exists(keys.http_attempt_token(job.job_id))
    assert store.zscore(keys.tenant_dead_letters("acme"), job.job_id) is None
    assert backlog_mismatches(store) == {}
    # when Redis takes writes again and the receiver sends its completion again
    store.config_set("maxmemory", "0")
    done = client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers=headers)
    # then the job ends as the completion says, once, with the backlog exact
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.get_json()["state"] == ends
    assert store.hget(keys.job(job.job_id), "attempts") == "1"
    assert (store.zscore(keys.tenant_dead_letters("acme"), job.job_id) is not None) == (ends == "dead")
    assert store.zscore(keys.WATCH, job.job_id) is None
    assert backlog_mismatches(store) == {}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("memory_restored")
def test_a_retry_a_full_redis_would_not_park_is_still_delivered(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a handed-off attempt with a retry left, and Redis that runs out of memory after its
    # failure is recorded, while the next attempt's message is being parked
    job, token = _handed_off(store)
    proxy.delay(PARK_SHA, 1.5)
    filler = _out_of_memory_once_delayed(proxy, store)
    # when the receiver reports a retryable error
    answer = client.post(
        f"/v1/jobs/{job.job_id}/complete",
        json={"error": "try again", "retryable": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    filler.join(10)
    # then the answer is a 200: the job is retrying, watched
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert store.hget(keys.job(job.job_id), "state") == "retrying"
    assert store.zscore(keys.WATCH, job.job_id) is not None
    # when Redis takes writes again, then the sweep publishes the retry, which runs once
    store.config_set("maxmemory", "0")
    _run_queue(direct, store, client, tmp_path / "worker.log", [job.job_id])
    assert store.hget(keys.job(job.job_id), "state") == "succeeded"
    assert [s["attempt"] for s in witness_starts(store, job.job_id)] == [2]


# --- out of memory in the middle of a batch ------------------------------------------------


#: A tenant whose jobs only the batch test makes (its storage budget's counters checked exactly).
BUDGETED = "budget-flow"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("memory_restored")
def test_a_batch_cut_short_by_a_full_redis_answers_the_jobs_it_admitted(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a batch of 101 jobs, each with an idempotency key (two runs of the batch script: 100
    # jobs, then 1), and a Redis that runs out of memory between the two runs
    jobs = [
        {"jobType": "witness.sleep", "payload": {"seconds": 0}, "idempotencyKey": uuid.uuid4().hex} for _ in range(101)
    ]
    records = set(store.scan_iter(match=keys.job("*"), count=1000))
    proxy.delay(ADMIT_BATCH_SHA, 0.0, alone=True)
    proxy.delay(ADMIT_BATCH_SHA, 1.5, alone=True)
    filler = _out_of_memory_once_delayed(proxy, store)
    # when the batch is submitted
    response = client.post("/v1/batches", json={"jobs": jobs}, headers=auth(BUDGETED))
    filler.join(10)
    store.config_set("maxmemory", "0")
    # then the answer names the 100 jobs admitted, and the last one is a 503 problem (a 503 for
    # the whole batch would say nothing was enqueued: a resend without keys would run 100 twice)
    assert response.status_code == 200, response.get_data(as_text=True)
    items = response.get_json()["items"]
    assert [item["status"] for item in items] == [202] * 100 + [503], items[-1]
    assert items[-1]["problem"]["status"] == 503
    admitted = [item["job"]["jobId"] for item in items[:100]]
    # and exactly those exist, counted in the backlog once
    created = set(store.scan_iter(match=keys.job("*"), count=1000)) - records
    assert created == {keys.job(job_id) for job_id in admitted}
    assert backlog_mismatches(store) == {}
    assert stored_bytes_mismatches(store, [BUDGETED]) == {}
    # when Redis takes writes again and the batch is sent again with the same keys
    again = client.post("/v1/batches", json={"jobs": jobs}, headers=auth(BUDGETED))
    assert again.status_code == 200, again.get_data(as_text=True)
    items = again.get_json()["items"]
    # then the 100 are given back (200, the same jobs) and the last is admitted
    assert [item["status"] for item in items] == [200] * 100 + [202]
    assert [item["job"]["jobId"] for item in items[:100]] == admitted
    # and every job runs once and succeeds
    every = [item["job"]["jobId"] for item in items]
    _run_queue(direct, store, client, tmp_path / "worker.log", every)
    assert all(store.hget(keys.job(job_id), "state") == "succeeded" for job_id in every)
    assert stored_bytes_mismatches(store, [BUDGETED]) == {}


# --- writes paused while batches are submitted -------------------------------------------


def _pause_writes(store: Redis, seconds: float) -> None:
    store.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "WRITE")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("pause", [1.0, 7.0], ids=["shorter than the API's timeout", "longer than its retries"])
def test_a_batch_submitted_while_redis_pauses_writes_is_admitted_whole_or_not_at_all(
    client: FlaskClient, store: Redis, direct: Settings, tmp_path: Path, pause: float
) -> None:
    # given batches with an idempotency key per job, and Redis pausing every write
    batches = [
        [{"jobType": "witness.sleep", "payload": {"seconds": 0}, "idempotencyKey": uuid.uuid4().hex} for _ in range(3)]
        for _ in range(3)
    ]
    records = set(store.scan_iter(match=keys.job("*"), count=1000))
    answers: list[Any] = [None] * len(batches)

    def send(i: int) -> None:
        answers[i] = client.post("/v1/batches", json={"jobs": batches[i]}, headers=auth("acme"))

    # when they are submitted while Redis pauses writes
    _pause_writes(store, pause)
    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    time.sleep(pause)  # whatever Redis held is let through
    # then each answer is a 200 naming a job per item, or a 503 problem document
    accepted: dict[str, str] = {}  # idempotency key -> job id
    for jobs, answer in zip(batches, answers, strict=True):
        assert answer.status_code in (200, 503), answer.get_data(as_text=True)
        if answer.status_code == 503:
            assert _is_problem(answer, 503)
            continue
        for sent, item in zip(jobs, answer.get_json()["items"], strict=True):
            assert item["status"] in (202, 503), item
            if item["status"] == 202:
                accepted[sent["idempotencyKey"]] = item["job"]["jobId"]
    # and no job exists that no 2xx named, however the pause fell
    created = set(store.scan_iter(match=keys.job("*"), count=1000)) - records
    assert created <= {keys.job(job_id) for job_id in accepted.values()}, (answers, created)
    assert backlog_mismatches(store) == {}
    # when each batch is sent again with the same keys
    for jobs in batches:
        again = client.post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
        assert again.status_code == 200, again.get_data(as_text=True)
        for sent, item in zip(jobs, again.get_json()["items"], strict=True):
            assert item["status"] in (200, 202), item
            key = sent["idempotencyKey"]
            # then a job admitted before is given back (200, the same job); the rest are admitted
            if key in accepted:
                assert (item["status"], item["job"]["jobId"]) == (200, accepted[key])
            accepted[key] = item["job"]["jobId"]
    # and every job runs once and succeeds
    _run_queue(direct, store, client, tmp_path / "worker.log", list(accepted.values()))
    assert all(store.hget(keys.job(job_id), "state") == "succeeded" for job_id in accepted.values())


# --- a worker killed between its handler's return and the outcome landing ---------------


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("max_retries", [0, 2])
@pytest.mark.parametrize("victim", ["pool process", "whole worker"])
def test_a_worker_killed_while_its_finished_attempts_outcome_is_held_runs_no_attempt_twice(
    client: FlaskClient, store: Redis, direct: Settings, tmp_path: Path, victim: str, max_retries: int
) -> None:
    # given a worker running a job whose handler is about to return
    worker = WorkerProcess(settings_env(direct), tmp_path / "first.log", queues=[QUEUE], concurrency=1).start()
    second: WorkerProcess | None = None
    try:
        worker.wait_ready(store, ["witness.sleep"])
        body = {"jobType": "witness.sleep", "payload": {"seconds": 1.0}, "options": {"maxRetries": max_retries}}
        response = client.post("/v1/jobs", json=body, headers=auth("acme"))
        assert response.status_code == 202, response.get_data(as_text=True)
        job_id = response.get_json()["jobId"]
        wait_for(lambda: witness_starts(store, job_id), timeout=30)
        # when Redis holds every write for longer than the attempt's lease (its outcome and the
        # lease's renewal wait), and the worker is SIGKILLed once its handler has returned
        _pause_writes(store, 5.0)
        time.sleep(2.0)
        if victim == "pool process":
            os.kill(witness_starts(store, job_id)[0]["pid"], signal.SIGKILL)
        else:
            worker.kill_group()
            second = WorkerProcess(settings_env(direct), tmp_path / "second.log", queues=[QUEUE], concurrency=1).start()
        # then the job reaches a final state, each attempt's handler started once, the backlog exact
        assert_invariants(store, client, [job_id], timeout=90)
        doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
        # and its attempts never exceed maxRetries + 1
        assert 1 <= doc["attempts"] <= max_retries + 1, doc
        starts = [s["attempt"] for s in witness_starts(store, job_id)]
        assert starts == list(range(1, len(starts) + 1)), starts
        assert doc["state"] in ("succeeded", "dead"), doc
    finally:
        worker.stop()
        if second is not None:
            second.stop()


# --- a claim that reaches Redis late ----------------------------------------------------

CLAIM_SHA = _sha("pulse_core.store", "claim")
#: The late-claim test's lease: renewed every 2 s, while the sweep looks every 0.5 s.
SLOW_LEASE_SECONDS = 6.0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_claim_that_reaches_redis_late_gets_a_whole_lease_and_its_attempt_runs_alone(
    proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a worker with two pool processes whose link to Redis holds a claim back longer than
    # a lease (a slow link one way, or a Redis stalled meanwhile)
    patient = replace(direct, lease_seconds=SLOW_LEASE_SECONDS, queued_check_seconds=60.0)
    client = create_app(patient).test_client()  # its jobs' first check comes after a minute
    late = replace(patient, redis_url=proxy.url)
    worker = WorkerProcess(settings_env(late), tmp_path / "late.log", queues=[QUEUE], concurrency=2).start()
    try:
        worker.wait_ready(store, ["witness.sleep"])
        store.script_load(source("pulse_core.store", "claim"))
        ids = []
        for _ in range(3):
            # when a job's claim reaches Redis 8 s after it was made
            proxy.delay(CLAIM_SHA, SLOW_LEASE_SECONDS + 2.0)
            body = {"jobType": "witness.sleep", "payload": {"seconds": 3.0}, "options": {"maxRetries": 2}}
            response = client.post("/v1/jobs", json=body, headers=auth("acme"))
            assert response.status_code == 202, response.get_data(as_text=True)
            ids.append(response.get_json()["jobId"])
            wait_for(lambda job_id=ids[-1]: witness_starts(store, job_id), timeout=30)
            assert proxy.delays_left() == 0
            time.sleep(4.0)
        # then each attempt claimed ran alone: its lease ran from when the claim reached Redis,
        # so no sweep took it for lost while its worker ran it, and no second attempt started
        assert_invariants(store, client, ids, timeout=60)
        for job_id in ids:
            doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
            assert (doc["state"], doc["attempts"]) == ("succeeded", 1), (doc, witness_starts(store, job_id))
    finally:
        worker.stop()
