"""The generic task on a real worker: failures, result caps, messages, handler modules."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import publish_counter
import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import create_celery, encode_message, publish_job
from pulse_core.jobs import Job, new_job_id, new_trace_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import (
    WorkerProcess,
    auth,
    child_env,
    running_workers,
    settings_env,
    wait_for,
    wait_for_state,
)


def test_a_failing_handler_leaves_the_job_dead_with_its_error(live_client: FlaskClient) -> None:
    # given a handler that always fails (retryably; diag.fail declares max_retries=3)
    job_id = live_client.post(
        "/v1/jobs", json={"jobType": "diag.fail", "payload": {}}, headers=auth("acme")
    ).get_json()["jobId"]
    # when the worker runs it
    doc = wait_for_state(live_client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
    # then it is dead after 1 + 3 attempts, and the error says what happened without a
    # full stack dump
    assert doc["state"] == "dead"
    assert doc["attempts"] == 4
    assert doc["error"]["type"] == "RetryableError"
    assert "diag.fail always fails" in doc["error"]["message"]
    assert "Traceback" in doc["error"]["traceback"]
    assert len(doc["error"]["traceback"]) <= 4000
    assert doc["result"] is None


def test_a_result_over_the_cap_is_refused(live_client: FlaskClient, settings: Settings) -> None:
    # given a payload whose echo is larger than the result cap
    big = {"blob": "x" * (settings.result_max_bytes + 10)}
    job_id = live_client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": big}, headers=auth("acme")
    ).get_json()["jobId"]
    # then the job is dead with ResultTooLarge (permanent: no retry) and no result stored
    doc = wait_for_state(live_client, "acme", job_id, {"dead", "succeeded"}, timeout=60)
    assert doc["state"] == "dead"
    assert doc["attempts"] == 1
    assert doc["error"]["type"] == "ResultTooLarge"
    assert doc["result"] is None


def test_message_carries_job_type_as_display_name_and_no_payload(settings: Settings, redis: Redis) -> None:
    # given a job published to a queue no worker consumes
    queue = "inspect-only"
    job = Job(
        job_id=new_job_id(),
        tenant_id="acme",
        job_type="diag.echo",
        queue=queue,
        payload={"secret": "s3cr3t-value"},
        trace_id=new_trace_id(),
        created_at=utc_now(),
    )
    app = create_celery(settings)
    _, broker_list = encode_message(app, job)  # the job's queue, at its priority
    redis.delete(broker_list)
    # when it is published
    publish_job(app, job)
    # then the raw message shows the jobType as its name, JSON, and only the job id
    raw = redis.lrange(broker_list, 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == "pulse.run_job"
    assert message["headers"]["shadow"] == "diag.echo"
    assert "s3cr3t-value" not in raw[0]
    assert "s3cr3t-value" not in message["headers"]["argsrepr"]
    redis.delete(broker_list)


def test_a_worker_with_a_handler_module_makes_its_job_type_acceptable(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given an API on a queue of its own, with no worker for extra.reverse yet
    settings = replace(isolated_settings, handler_modules=("extra_handlers",))
    client = create_app(settings).test_client()
    body = {"jobType": "extra.reverse", "payload": {"text": "pulse"}}
    redis.zrem("pulse:jobtypes", "extra.reverse")
    assert client.post("/v1/jobs", json=body, headers=auth("acme")).status_code == 422
    # when a worker starts with the module in PULSE_HANDLER_MODULES
    worker = WorkerProcess(
        settings_env(settings), tmp_path / "w.log", queues=[settings.default_queue], concurrency=1
    ).start()
    try:
        worker.wait_ready(redis, ["extra.reverse"])
        # then the API accepts the jobType and the worker runs it
        response = client.post("/v1/jobs", json=body, headers=auth("acme"))
        assert response.status_code == 202
        doc = wait_for_state(client, "acme", response.get_json()["jobId"], {"succeeded", "dead"})
        assert doc["result"] == {"reversed": "eslup"}
    finally:
        worker.stop()
        redis.zrem("pulse:jobtypes", "extra.reverse")


def test_registering_a_job_type_twice_stops_the_worker(settings: Settings, tmp_path: Path) -> None:
    # given two handler modules that both register extra.reverse
    settings = replace(
        settings, handler_modules=("extra_handlers", "extra_handlers_dup"), default_queue="never-consumed"
    )
    worker = WorkerProcess(settings_env(settings), tmp_path / "w.log", queues=["never-consumed"], concurrency=1).start()
    # when the worker starts, then it exits non-zero naming the jobType and both handlers
    assert worker.process is not None
    code = worker.process.wait(60)
    worker.stop()
    assert code != 0
    log = worker.log()
    assert "extra.reverse" in log and "already registered" in log
    assert "extra_handlers.reverse" in log


def test_plain_celery_cli_can_ping_the_worker(worker: WorkerProcess, settings: Settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pulse_worker.app", "inspect", "ping", "--timeout", "5"],
        env=child_env(settings_env(settings)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pong" in out.stdout


@pytest.mark.parametrize("options", [{}, {"delaySeconds": 30}], ids=["due now", "delayed"])
def test_a_submit_needs_no_broker_other_than_the_job_stores_redis(
    settings: Settings, redis: Redis, options: dict[str, int]
) -> None:
    # given an API whose broker is another one, unreachable (its job store is fine)
    queue = "t-broker-down"
    announce(redis, ["diag.echo"], 60)
    client = create_app(replace(settings, broker_url="redis://127.0.0.1:1/0", default_queue=queue)).test_client()
    # when a job due now, or delayed, is submitted
    job = {"jobType": "diag.echo", "payload": {}, "options": options}
    response = client.post("/v1/jobs", json=job, headers=auth("globex"))
    # then it is accepted: it waits in Redis for the workers to publish it (due now: in its
    # ready set; delayed: parked until due, without a message), so the API never needed the broker
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["jobId"]
    try:
        if options:
            assert redis.hget(keys.job(job_id), "state") == "scheduled"
            assert redis.zscore(keys.PARKED_UNTIL, job_id) is not None
            assert redis.hget(keys.PARKED_MESSAGES, job_id) == "\n"
        else:
            assert redis.hget(keys.job(job_id), "state") == "queued"
            assert redis.zscore(keys.ready(queue, "globex"), job_id) is not None
    finally:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("globex")).status_code == 200


def test_a_copy_that_arrives_before_its_job_is_due_waits_parked_not_as_an_eta_message(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a worker that counts the messages it publishes with a countdown or as a retry
    settings = replace(isolated_settings, handler_modules=("pulse_worker.diagnostics", "publish_counter"))
    redis.delete(publish_counter.ETA, publish_counter.RETRIES)
    client = create_app(settings).test_client()
    celery = create_celery(settings)
    with running_workers(redis, settings, tmp_path, ["diag.echo"], concurrency=1, count=1):
        # and two jobs delayed 4 s: the first parked until due as usual, the second taken out of
        # parking early (as a clock ahead of Redis' would)
        body = {"jobType": "diag.echo", "payload": {}, "options": {"delaySeconds": 4}}
        submitted = time.time()
        parked, released = (
            client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"] for _ in range(2)
        )
        redis.zrem(keys.PARKED_UNTIL, released)
        redis.hdel(keys.PARKED_MESSAGES, released)
        # when a copy of each reaches the worker at once
        for job_id in (parked, released):
            publish_job(celery, Job.from_redis(redis.hgetall(keys.job(job_id))))
        # then the copy of the parked one is dropped, and the other one is parked until due
        wait_for(lambda: redis.zscore(keys.PARKED_UNTIL, released) is not None, timeout=30)
        docs = [
            wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=60) for job_id in (parked, released)
        ]
    # and each runs once, when due
    assert [(doc["state"], doc["attempts"]) for doc in docs] == [("succeeded", 1)] * 2
    for doc in docs:
        started = datetime.fromisoformat(doc["startedAt"].replace("Z", "+00:00")).timestamp()
        assert started >= submitted + 3.5, started - submitted
    # and no message waited in the worker: none was sent back with a countdown
    assert [int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)] == [0, 0]
    assert redis.zmscore(keys.PARKED_UNTIL, [parked, released]) == [None, None]
