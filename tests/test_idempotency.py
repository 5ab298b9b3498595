"""Idempotent submission: one job per key and body, however often and concurrently sent."""

from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import (
    auth,
    post_from_new_process,
    settings_env,
    wait_for_state,
    waiting_messages,
)


def body(key: str, **extra) -> dict:
    return {"jobType": "diag.echo", "payload": {"n": 1}, "idempotencyKey": key, **extra}


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def test_same_key_and_body_give_back_the_original_job_whatever_its_state(
    live_client: FlaskClient,
) -> None:
    # given a job submitted with an idempotency key, which then runs to success
    key = new_key()
    first = live_client.post("/v1/jobs", json=body(key), headers=auth("acme"))
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    job_id = first.get_json()["jobId"]
    wait_for_state(live_client, "acme", job_id, {"succeeded"})
    # when the same body is sent again, with the key in the header this time
    again = live_client.post(
        "/v1/jobs",
        json={k: v for k, v in body(key).items() if k != "idempotencyKey"},
        headers={**auth("acme"), "Idempotency-Key": key},
    )
    # then it is the original job, in its current state, marked as a replay
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/v1/jobs/{job_id}"
    doc = again.get_json()
    assert doc["jobId"] == job_id
    assert doc["state"] == "succeeded"


def test_same_key_with_another_body_is_refused(client: FlaskClient, redis: Redis) -> None:
    # given a job submitted with a key
    key = new_key()
    assert client.post("/v1/jobs", json=body(key), headers=auth("acme")).status_code == 202
    before = redis.zcard(keys.tenant_jobs("acme"))
    # when the key comes back with another payload or metadata
    for other in (
        body(key, payload={"n": 2}),
        body(key, metadata={"label": "x"}),
        {**body(key), "jobType": "diag.sleep"},
    ):
        response = client.post("/v1/jobs", json=other, headers=auth("acme"))
        # then it is a 422 whose problem type says so, and no job was made
        assert response.status_code == 422
        problem = response.get_json()
        assert problem["type"].endswith("/idempotency-key-reused")
        assert "idempotencyKey" in problem["errors"]
    assert redis.zcard(keys.tenant_jobs("acme")) == before


def test_same_key_with_other_options_is_refused(client: FlaskClient, redis: Redis) -> None:
    # given a job submitted with a key and options (its jobType live)
    announce(redis, ["diag.echo"], 600)
    key = new_key()
    sent = body(key, options={"priority": 3, "maxRetries": 1})
    assert client.post("/v1/jobs", json=sent, headers=auth("acme")).status_code == 202
    before = redis.zcard(keys.tenant_jobs("acme"))
    # when the key comes back with the same job but other options (or none)
    for options in ({"priority": 9, "maxRetries": 1}, {"priority": 3, "maxRetries": 4}, {}, {"priority": 3}):
        response = client.post("/v1/jobs", json={**sent, "options": options}, headers=auth("acme"))
        # then it is another body: 422, and no job was made, not the first job given back
        assert response.status_code == 422, (options, response.get_json())
        assert response.get_json()["type"].endswith("/idempotency-key-reused")
    assert redis.zcard(keys.tenant_jobs("acme")) == before


def test_same_options_written_otherwise_are_the_same_body(client: FlaskClient, redis: Redis) -> None:
    # given a delayed job submitted with a key and a runAt in UTC, and one with no options
    announce(redis, ["diag.echo"], 600)
    key, plain = new_key(), new_key()
    due = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    first = client.post(
        "/v1/jobs",
        json=body(key, options={"runAt": due.strftime("%Y-%m-%dT%H:%M:%SZ"), "priority": 2}),
        headers=auth("acme"),
    )
    plain_first = client.post("/v1/jobs", json=body(plain), headers=auth("acme"))
    assert (first.status_code, plain_first.status_code) == (202, 202)
    # when each comes back with its options in another order and notation (the same instant
    # at another offset; empty options for none)
    again = client.post(
        "/v1/jobs",
        json=body(key, options={"priority": 2, "runAt": due.astimezone(timezone(timedelta(hours=2))).isoformat()}),
        headers=auth("acme"),
    )
    plain_again = client.post("/v1/jobs", json=body(plain, options={}), headers=auth("acme"))
    # then each is the same request: its first job, given back
    assert (again.status_code, plain_again.status_code) == (200, 200)
    assert again.get_json()["jobId"] == first.get_json()["jobId"]
    assert plain_again.get_json()["jobId"] == plain_first.get_json()["jobId"]


def test_key_order_and_tenant_id_do_not_change_the_body(client: FlaskClient) -> None:
    key = new_key()
    first = client.post("/v1/jobs", json=body(key, payload={"a": 1, "b": 2}), headers=auth("acme"))
    again = client.post("/v1/jobs", json=body(key, payload={"b": 2, "a": 1}, tenantId="acme"), headers=auth("acme"))
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["jobId"] == again.get_json()["jobId"]


def test_keys_belong_to_their_tenant(client: FlaskClient) -> None:
    key = new_key()
    ours = client.post("/v1/jobs", json=body(key), headers=auth("acme")).get_json()
    theirs = client.post("/v1/jobs", json=body(key), headers=auth("globex"))
    assert theirs.status_code == 202
    assert theirs.get_json()["jobId"] != ours["jobId"]


def test_header_and_body_keys_must_agree(client: FlaskClient) -> None:
    for headers in ({"Idempotency-Key": "other"}, {"Idempotency-Key": "x" * 201}):
        response = client.post("/v1/jobs", json=body("mine"), headers={**auth("acme"), **headers})
        assert response.status_code == 422
        assert response.get_json()["type"].endswith("/invalid-idempotency-key")


def test_a_replay_consumes_no_rate_limit(client: FlaskClient) -> None:
    # given tenant "idem" (3/minute) submitted once with a key
    key = new_key()
    first = client.post("/v1/jobs", json=body(key), headers=auth("idem"))
    assert first.headers["RateLimit-Remaining"] == "2"
    # when the same request is replayed five times
    replays = [client.post("/v1/jobs", json=body(key), headers=auth("idem")) for _ in range(5)]
    # then each replay answers with the job, and the allowance is untouched
    assert [r.status_code for r in replays] == [200] * 5
    assert {r.headers["RateLimit-Remaining"] for r in replays} == {"2"}


def test_fifty_concurrent_threads_make_one_job(app: Flask, redis: Redis) -> None:
    # given 50 threads about to send the same keyed body at once
    announce(redis, ["diag.echo"], 600)
    key = new_key()

    def send(_: int) -> tuple[int, str]:
        response = app.test_client().post("/v1/jobs", json=body(key), headers=auth("acme"))
        return response.status_code, response.get_json()["jobId"]

    before = redis.zcard(keys.tenant_jobs("acme"))
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(send, range(50)))
    # then exactly one job was created and every answer names it
    assert sorted(status for status, _ in answers) == [200] * 49 + [202]
    assert len({job_id for _, job_id in answers}) == 1
    assert redis.zcard(keys.tenant_jobs("acme")) == before + 1


def test_concurrent_identical_submissions_from_many_processes_make_one_job(settings: Settings, redis: Redis) -> None:
    # given 5 API processes, each sending the same keyed body 10 times from the start line
    announce(redis, ["diag.echo"], 600)
    key = new_key()
    queue = "t-idem-race"
    env = settings_env(replace(settings, default_queue=queue))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(5, mp_context=spawn) as pool:
        futures = [
            pool.submit(post_from_new_process, env, "acme", [body(key)] * 10, (f"pulse:test:{key}", 5))
            for _ in range(5)
        ]
        answers = [answer for future in futures for answer in future.result(timeout=120)]
    # then one of the 50 answers created the job, and all 50 carry its id
    statuses = [status for status, _, _ in answers]
    assert statuses.count(202) == 1
    assert statuses.count(200) == 49
    assert len({doc["jobId"] for _, _, doc in answers}) == 1
    # and exactly one message was queued
    assert waiting_messages(redis, queue) == 1
    redis.delete(queue)


def test_a_keyed_submit_needs_no_broker_and_its_key_keeps_the_job(settings: Settings, redis: Redis) -> None:
    # given an API whose broker is unreachable (Redis, the job store, is fine)
    announce(redis, ["diag.echo"], 600)
    broken = create_app(replace(settings, broker_url="redis://127.0.0.1:1/0")).test_client()
    key = new_key()
    before = redis.zcard(keys.tenant_jobs("globex"))
    # when a keyed delayed job is submitted, then it is accepted: the admission script parks it
    # in Redis until due (the workers publish it), so the API never needs the broker and no
    # publish can fail after the key is taken
    delayed = {"options": {"delaySeconds": 30}}
    response = broken.post("/v1/jobs", json=body(key, **delayed), headers=auth("globex"))
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["jobId"]
    assert redis.zscore(keys.PARKED_UNTIL, job_id) is not None
    assert redis.zcard(keys.tenant_jobs("globex")) == before + 1
    working = create_app(replace(settings, default_queue="t-idem-release")).test_client()
    try:
        # and the same key gives back that job, with the broker down or back
        for client in (broken, working):
            again = client.post("/v1/jobs", json=body(key, **delayed), headers=auth("globex"))
            assert again.status_code == 200 and again.get_json()["jobId"] == job_id, again.get_data(as_text=True)
        assert redis.zcard(keys.tenant_jobs("globex")) == before + 1
    finally:
        assert working.post(f"/v1/jobs/{job_id}/cancel", headers=auth("globex")).status_code == 200
