"""A lost admission answer (issue 10, point 3): the API's link to Redis loses the admission
script's request or its reply, for real, through a TCP proxy (``tests.faults.RedisProxy``).
redis-py times out and retries the call once on a new connection; if that answer is lost
too, the submit asks the record whether the script ran.

Whatever the interleaving: a 202 names one job, counted once in the backlog, with one
message, whose handler runs once, and a resend with the same idempotency key answers that
job; a 503 is true: nothing of the job exists, and the resend is admitted afresh."""

from __future__ import annotations

import hashlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pulse_api.observability import metrics_registry
from pulse_core import keys
from pulse_core.guards.idempotency import store_key
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.lua_scripts import source
from pulse_core.settings import Settings
from pulse_core.store.job_store import CancelOutcome, JobStore
from pulse_core.store.job_types import announce
from tests.faults import Loss, RedisProxy, api_through, assert_invariants
from tests.invariants import backlog_mismatches
from tests.support import (
    WorkerProcess,
    auth,
    handed_off,
    settings_env,
    wait_for,
    waiting_messages,
    witness_starts,
)

QUEUE = "lost-answer"
TENANT = "acme"
#: How long the API's Redis client waits for an answer here (10 s in production): a lost
#: reply times out this fast, so each case costs seconds, not tens of seconds.
SOCKET_TIMEOUT_SECONDS = 2.0


@pytest.fixture(scope="module")
def api(direct: Settings, proxy: RedisProxy, store: Redis) -> Flask:
    """The API, reaching Redis (its job store and broker) only through the proxy."""
    announce(store, ["witness.sleep"], 3600)  # as a live worker would
    app = api_through(direct, proxy, socket_timeout=SOCKET_TIMEOUT_SECONDS)
    client = app.test_client()
    warm = _post(client, {"jobType": "witness.sleep", "payload": {"seconds": 0}})
    assert warm.status_code == 202  # the admission script is loaded: a call is one EVALSHA
    return app


@pytest.fixture
def client(api: Flask) -> FlaskClient:
    return api.test_client()


def _post(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/jobs", json=body, headers=auth(TENANT))


#: The admission script's SHA: each request carrying it that reaches Redis runs it once.
ADMIT_SHA = hashlib.sha1(source("pulse_core.guards", "admit").encode()).hexdigest()


def _pending(store: Redis) -> int:
    return int(store.hget(keys.tenant_counts(TENANT), "pending") or 0)


def _records(store: Redis) -> set[str]:
    return set(store.scan_iter(match=keys.job("*"), count=1000))


def _run_queue(direct: Settings, store: Redis, client: FlaskClient, log: Path, accepted: list[str]) -> None:
    """A worker runs what waits on the queue; then the invariants hold for ``accepted``."""
    worker = WorkerProcess(settings_env(direct), log, queues=[QUEUE], concurrency=1).start()
    try:
        worker.wait_ready(store, ["witness.sleep"])
        assert_invariants(store, client, accepted, timeout=60)
    finally:
        worker.stop()


#: name -> what happens to each call of the admission script (redis-py makes two), and how
#: many times the script ran in Redis.
RAN: dict[str, tuple[list[Loss], int]] = {
    "reply lost, the retry answers": (["reply"], 2),
    "reply lost twice, the record decides": (["reply", "reply"], 2),
    "reply lost then retry dropped, the record decides": (["reply", "request"], 1),
    "request dropped, the retry runs": (["request"], 1),
}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("losses", "runs"), list(RAN.values()), ids=list(RAN))
def test_an_admission_that_ran_is_answered_202_once_with_one_job(
    client: FlaskClient,
    proxy: RedisProxy,
    store: Redis,
    direct: Settings,
    tmp_path: Path,
    losses: list[Loss],
    runs: int,
) -> None:
    # given an API whose link to Redis loses the admission script's answers as ``losses`` say
    body = {"jobType": "witness.sleep", "payload": {"seconds": 0}, "idempotencyKey": uuid.uuid4().hex}
    calls, pending, waiting = proxy.forwarded(ADMIT_SHA), _pending(store), waiting_messages(store, QUEUE)
    proxy.lose("EVALSHA", losses)
    # when a job is submitted
    response = _post(client, body)
    # then the script ran in Redis (once or twice), and the answer is one 202
    assert proxy.losses_left() == 0
    assert proxy.forwarded(ADMIT_SHA) - calls == runs
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["RateLimit-Limit"] == "1000"  # the tenant's true limit, whichever answered
    job_id = response.get_json()["jobId"]
    # and the job is counted once in the backlog, with one message on its queue
    assert store.hget(keys.job(job_id), "state") == "queued"
    assert _pending(store) - pending == 1
    assert waiting_messages(store, QUEUE) - waiting == 1
    # and a resend with the same idempotency key answers that job
    again = _post(client, body)
    assert again.status_code == 200 and again.get_json()["jobId"] == job_id
    # and once a worker runs, the job succeeds, its handler started once, the backlog exact
    _run_queue(direct, store, client, tmp_path / "worker.log", [job_id])
    assert store.hget(keys.job(job_id), "state") == "succeeded"
    assert len(witness_starts(store, job_id)) == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_admission_that_never_ran_is_answered_503_and_nothing_exists(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given an API whose link to Redis drops both requests of the admission script
    key = uuid.uuid4().hex
    body = {"jobType": "witness.sleep", "payload": {"seconds": 0}, "idempotencyKey": key}
    calls, pending, waiting = proxy.forwarded(ADMIT_SHA), _pending(store), waiting_messages(store, QUEUE)
    records, index = _records(store), store.zcard(keys.tenant_jobs(TENANT))
    proxy.lose("EVALSHA", ["request", "request"])
    # when a job is submitted
    response = _post(client, body)
    # then the script never ran, and the answer is a 503 problem document
    assert proxy.losses_left() == 0
    assert proxy.forwarded(ADMIT_SHA) == calls
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.content_type.startswith("application/problem+json")
    # and it is true: no record, index entry, backlog count, message or idempotency key
    assert _records(store) == records
    assert store.zcard(keys.tenant_jobs(TENANT)) == index
    assert _pending(store) == pending
    assert waiting_messages(store, QUEUE) == waiting
    assert not store.exists(store_key(TENANT, key))
    # when the client resends with the same key over a healthy link
    again = _post(client, body)
    # then it is admitted as a new job, which runs once
    assert again.status_code == 202, again.get_data(as_text=True)
    job_id = again.get_json()["jobId"]
    assert _records(store) - records == {keys.job(job_id)}
    _run_queue(direct, store, client, tmp_path / "worker.log", [job_id])
    assert len(witness_starts(store, job_id)) == 1


#: The batch admission script's SHA (``admit_batch``: a run per 100 jobs of a batch).
ADMIT_BATCH_SHA = hashlib.sha1(source("pulse_core.guards", "admit_batch").encode()).hexdigest()


def _warm_batch_script(client: FlaskClient) -> None:
    """Load the batch script into Redis (an empty batch is refused before it): a call is then
    one EVALSHA that runs, not one answered NOSCRIPT."""
    body = {"jobs": [{"jobType": "witness.sleep", "payload": {"seconds": 0}, "idempotencyKey": "warm-batch"}]}
    assert client.post("/v1/batches", json=body, headers=auth(TENANT)).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_batch_whose_admission_ran_is_answered_with_its_jobs_not_503(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given an API whose link to Redis loses both replies of the batch admission script (it ran)
    bodies = [{"jobType": "witness.sleep", "payload": {"seconds": 0}} for _ in range(3)]
    _warm_batch_script(client)
    calls, pending, records = proxy.forwarded(ADMIT_BATCH_SHA), _pending(store), _records(store)
    proxy.lose("EVALSHA", ["reply", "reply"])
    # when a batch without idempotency keys is submitted
    response = client.post("/v1/batches", json={"jobs": bodies}, headers=auth(TENANT))
    # then the script ran, and the answer names the jobs it admitted: a 503 would be false
    # (docs/api.md: nothing was enqueued), and a client resending it would run every job twice
    assert proxy.losses_left() == 0
    assert proxy.forwarded(ADMIT_BATCH_SHA) - calls == 2
    assert response.status_code == 200, response.get_data(as_text=True)
    items = response.get_json()["items"]
    assert [item["status"] for item in items] == [202, 202, 202]
    job_ids = [item["job"]["jobId"] for item in items]
    assert _records(store) - records == {keys.job(job_id) for job_id in job_ids}
    assert _pending(store) - pending == 3
    # and each job runs once, the backlog exact
    _run_queue(direct, store, client, tmp_path / "worker.log", job_ids)
    assert all(len(witness_starts(store, job_id)) == 1 for job_id in job_ids)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_batch_whose_admission_never_ran_is_answered_503_and_nothing_exists(
    client: FlaskClient, proxy: RedisProxy, store: Redis
) -> None:
    # given an API whose link to Redis drops both requests of the batch admission script
    bodies = [{"jobType": "witness.sleep", "payload": {"seconds": 0}} for _ in range(3)]
    _warm_batch_script(client)
    calls, pending, records = proxy.forwarded(ADMIT_BATCH_SHA), _pending(store), _records(store)
    proxy.lose("EVALSHA", ["request", "request"])
    # when a batch is submitted
    response = client.post("/v1/batches", json={"jobs": bodies}, headers=auth(TENANT))
    # then the script never ran, and the answer is a true 503: nothing of the batch exists
    assert proxy.losses_left() == 0
    assert proxy.forwarded(ADMIT_BATCH_SHA) == calls
    assert response.status_code == 503, response.get_data(as_text=True)
    assert _records(store) == records
    assert _pending(store) == pending


#: The replay script's SHA (``readmit``: a dead letter queued again).
READMIT_SHA = hashlib.sha1(source("pulse_core.guards", "readmit").encode()).hexdigest()


def _dead_letter(store: Redis) -> str:
    """A dead ``witness.sleep`` job of the tenant on the test's queue, made by the store's scripts."""
    jobs = JobStore(store)
    job = Job(
        job_id=new_job_id(),
        tenant_id=TENANT,
        job_type="witness.sleep",
        queue=QUEUE,
        payload={"seconds": 0},
        created_at=utc_now(),
    )
    jobs.create(job)
    claimed = jobs.claim(job.job_id, owner="w", lease_seconds=60, fallback_max_retries=0, lost_error={})
    assert claimed.job is not None
    assert jobs.finalize(claimed.job, JobState.DEAD, error={"type": "Boom", "message": "x"})
    return job.job_id


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_replay_whose_answer_was_lost_is_answered_202_and_runs_once(
    client: FlaskClient, proxy: RedisProxy, store: Redis, direct: Settings, tmp_path: Path
) -> None:
    # given a dead letter, the replay script loaded (a call is one EVALSHA that runs), and an
    # API whose link to Redis loses both replies of the replay script (it ran)
    warm = _dead_letter(store)
    assert client.post(f"/v1/dead-letters/{warm}/replay", headers=auth(TENANT)).status_code == 202
    job_id = _dead_letter(store)
    calls = proxy.forwarded(READMIT_SHA)
    proxy.lose("EVALSHA", ["reply", "reply"])
    # when the tenant replays it
    response = client.post(f"/v1/dead-letters/{job_id}/replay", headers=auth(TENANT))
    # then the script ran, and the answer is a 202: the job is queued again (a 503 would be
    # false, and the client's retry would find no such dead letter: 404)
    assert proxy.losses_left() == 0
    assert proxy.forwarded(READMIT_SHA) - calls == 2
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["jobId"] == job_id
    assert store.hget(keys.job(job_id), "state") == "queued"
    # and once a worker runs, each replayed job succeeds, its handler started once, the backlog exact
    _run_queue(direct, store, client, tmp_path / "worker.log", [warm, job_id])
    assert store.hget(keys.job(job_id), "state") == "succeeded"
    assert len(witness_starts(store, job_id)) == 1


#: The script a completion's token is checked with (``check_attempt``), then the one that ends it.
CHECK_ATTEMPT_SHA = hashlib.sha1(source("pulse_core.http_handlers", "check_attempt").encode()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_cancel_asked_while_a_202_jobs_final_error_is_recorded_ends_it_cancelled(
    client: FlaskClient, proxy: RedisProxy, store: Redis
) -> None:
    # given a running attempt whose receiver answered 202 (handed off, with its attempt token)
    jobs = JobStore(store)
    job = Job(job_id=new_job_id(), tenant_id=TENANT, job_type="hook.send", queue=QUEUE, created_at=utc_now())
    job, token = handed_off(store, job, fallback_max_retries=3)
    # and an API whose link to Redis holds the script after the token's check 3 s on its way
    # (both loaded: each is one EVALSHA that runs)
    store.script_load(source("pulse_core.http_handlers", "check_attempt"))
    store.script_load(source("pulse_core.store", "finalize"))
    proxy.delay("EVALSHA", 0.0)
    proxy.delay("EVALSHA", 3.0)
    answers: list[Any] = []
    body = {"error": "gave up", "retryable": False}
    headers = {"Authorization": f"Bearer {token}"}
    # when the receiver reports a final error, and its tenant asks the job to stop while the API
    # is recording that error (after it looked at cancelRequested)
    reporter = threading.Thread(
        target=lambda: answers.append(client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers=headers))
    )
    reporter.start()
    wait_for(lambda: proxy.delays_left() == 0, timeout=10)
    assert proxy.forwarded(CHECK_ATTEMPT_SHA) >= 1
    assert jobs.cancel(TENANT, job.job_id) is CancelOutcome.RUNNING
    reporter.join(timeout=20)
    # then the job ends cancelled, not dead (docs/execution-guarantees.md: a failure ends a job
    # whose cancel was asked cancelled, even when the cancel comes while it is being recorded)
    assert answers and answers[0].status_code == 200, answers and answers[0].get_data(as_text=True)
    assert store.hget(keys.job(job.job_id), "state") == "cancelled", store.hgetall(keys.job(job.job_id))
    assert store.zscore(keys.tenant_dead_letters(TENANT), job.job_id) is None
    assert backlog_mismatches(store) == {}


#: name -> a completion, the script that ends the attempt (its reply lost), the state it ends in.
LOST_COMPLETIONS = {
    "result": ({"result": {"rows": 1}}, "finalize", "succeeded"),
    "final error": ({"error": "bad input", "retryable": False}, "finalize", "dead"),
    "retryable error": ({"error": "try again", "retryable": True}, "schedule_retry", "retrying"),
}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "script", "ends"), list(LOST_COMPLETIONS.values()), ids=list(LOST_COMPLETIONS))
def test_a_completion_whose_answer_was_lost_is_answered_as_recorded_not_409(
    client: FlaskClient, proxy: RedisProxy, store: Redis, body: dict[str, Any], script: str, ends: str
) -> None:
    # given a running attempt whose receiver answered 202 (handed off, with its attempt token), a
    # retry left, and an API whose link to Redis loses the reply of the script that ends the attempt
    jobs = JobStore(store)
    job = Job(
        job_id=new_job_id(), tenant_id=TENANT, job_type="hook.send", queue=QUEUE, created_at=utc_now(), max_retries=1
    )
    job, token = handed_off(store, job)
    store.script_load(source("pulse_core.store", script))  # loaded: a call is one EVALSHA that runs
    sha = hashlib.sha1(source("pulse_core.store", script).encode()).hexdigest()
    calls = proxy.forwarded(sha)
    proxy.lose(sha, ["reply"])
    # when the receiver reports its outcome
    response = client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers={"Authorization": f"Bearer {token}"})
    # then the script ran twice (the second run found the attempt ended), and the answer is a 200
    # with the job as the completion left it: a 409 "the attempt is over" would be false
    assert proxy.losses_left() == 0
    assert proxy.forwarded(sha) - calls == 2
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["state"] == ends
    assert store.hget(keys.job(job.job_id), "state") == ends
    assert store.hget(keys.job(job.job_id), "attempts") == "1"
    # and the attempt's token is spent; a retry's next attempt waits parked until due
    assert not store.exists(keys.http_attempt_token(job.job_id))
    assert (store.zscore(keys.PARKED_UNTIL, job.job_id) is not None) == (ends == "retrying")
    assert backlog_mismatches(store) == {}
    if ends == "retrying":  # no worker reads this queue: end it
        assert jobs.cancel(TENANT, job.job_id) is CancelOutcome.CANCELLED


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "script", "ends"), list(LOST_COMPLETIONS.values()), ids=list(LOST_COMPLETIONS))
def test_a_completion_whose_answers_were_all_lost_is_answered_as_recorded_when_sent_again(
    client: FlaskClient, proxy: RedisProxy, store: Redis, body: dict[str, Any], script: str, ends: str
) -> None:
    # given a running attempt whose receiver answered 202 (handed off, with its attempt token), a
    # retry left, and an API whose link to Redis loses both replies of the script that ends the
    # attempt (redis-py's call and its retry): the outcome is recorded, the call answered 503
    jobs = JobStore(store)
    job = Job(
        job_id=new_job_id(), tenant_id=TENANT, job_type="hook.send", queue=QUEUE, created_at=utc_now(), max_retries=1
    )
    job, token = handed_off(store, job)
    store.script_load(source("pulse_core.store", script))
    proxy.lose(hashlib.sha1(source("pulse_core.store", script).encode()).hexdigest(), ["reply", "reply"])
    headers = {"Authorization": f"Bearer {token}"}
    first = client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers=headers)
    assert proxy.losses_left() == 0
    assert first.status_code == 503, first.get_data(as_text=True)
    assert store.hget(keys.job(job.job_id), "state") == ends
    # when the receiver sends the same completion again (its answer was lost)
    again = client.post(f"/v1/jobs/{job.job_id}/complete", json=body, headers=headers)
    # then it is answered 200 with the job as it is, as docs/http-handlers.md says, not 409
    # "the attempt is over" (the receiver would take its outcome for lost); nothing recorded twice
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["state"] == ends
    assert store.hget(keys.job(job.job_id), "attempts") == "1"
    assert backlog_mismatches(store) == {}
    # and a retry's next attempt waits parked until due
    assert (store.zscore(keys.PARKED_UNTIL, job.job_id) is not None) == (ends == "retrying")
    # and a completion with another body is still refused
    other = {"result": {"other": True}} if "error" in body else {"error": "other", "retryable": False}
    assert client.post(f"/v1/jobs/{job.job_id}/complete", json=other, headers=headers).status_code in (401, 409)
    assert store.hget(keys.job(job.job_id), "state") == ends
    if ends == "retrying":  # no worker reads this queue: end it
        assert jobs.cancel(TENANT, job.job_id) is CancelOutcome.CANCELLED


def _succeeded(app: Flask, job_type: str) -> float:
    """The API's ``pulse_jobs_succeeded`` count for acme's ``job_type``, as its metrics port shows it."""
    for family in text_string_to_metric_families(generate_latest(metrics_registry(app)).decode()):
        for sample in family.samples:
            if sample.name == "pulse_jobs_succeeded_total" and sample.labels == {
                "tenant": TENANT,
                "job_type": job_type,
            }:
                return sample.value
    return 0.0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_twin_completions_both_answered_count_the_outcome_once(
    api: Flask, client: FlaskClient, proxy: RedisProxy, store: Redis
) -> None:
    # given a running attempt whose receiver answered 202, and an API whose link to Redis brings
    # the first completion's finalize a second late (the twin's finalize lands first)
    job = Job(
        job_id=new_job_id(), tenant_id=TENANT, job_type="hook.twins", queue=QUEUE, created_at=utc_now(), max_retries=0
    )
    job, token = handed_off(store, job)
    finalize = source("pulse_core.store", "finalize")
    store.script_load(finalize)
    sha = hashlib.sha1(finalize.encode()).hexdigest()
    calls, before = proxy.forwarded(sha), _succeeded(api, "hook.twins")
    proxy.delay(sha, 1.0)

    def complete() -> Any:
        return client.post(
            f"/v1/jobs/{job.job_id}/complete", json={"result": "ok"}, headers={"Authorization": f"Bearer {token}"}
        )

    # when the receiver sends its completion twice, the twin while the first's finalize is on its way
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(complete)
        wait_for(lambda: proxy.delays_left() == 0, timeout=5)
        second = pool.submit(complete)
        answers = [first.result(), second.result()]
    # then both ran their finalize and both are answered 200 with the succeeded job
    assert proxy.forwarded(sha) - calls == 2
    assert [a.status_code for a in answers] == [200, 200], [a.get_data(as_text=True) for a in answers]
    assert {a.get_json()["state"] for a in answers} == {"succeeded"}
    # and the outcome is counted once, by the call that recorded it, not again by its twin
    assert _succeeded(api, "hook.twins") - before == 1
    assert backlog_mismatches(store) == {}
