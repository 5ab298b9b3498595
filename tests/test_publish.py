"""The message the admission script pushes is the one kombu's Redis transport would push."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core import keys
from pulse_core.broker.celery_app import (
    RUN_JOB_TASK,
    create_celery,
    encode_message,
    publish_job,
    publishes_inline,
)
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from tests.support import auth, write_tenants_file

VARYING = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}


def strip(message: dict) -> dict:
    """The envelope without the per-message ids (and Celery's unset ``ignore_result``)."""
    headers = {k: v for k, v in message["headers"].items() if k not in VARYING and k != "ignore_result"}
    props = {k: v for k, v in message["properties"].items() if k not in VARYING}
    return {**message, "headers": headers, "properties": props}


@pytest.mark.parametrize("priority", [0, 1, 4, 5, 7, 9])
def test_inline_message_matches_what_celery_publishes(settings: Settings, redis: Redis, priority: int) -> None:
    # given one job published through Celery/kombu and the same job encoded by Pulse
    queue = f"t-publish-compare-{priority}"
    app = create_celery(settings)
    job = Job(
        job_id="job-1", tenant_id="acme", job_type="diag.echo", queue=queue, created_at=utc_now(), priority=priority
    )
    publish_job(app, job)
    message, broker_list = encode_message(app, job)
    # then kombu put its message on exactly the list Pulse would push to (the queue's
    # list for the priority), and nowhere else
    lists = sorted(k for k in redis.scan_iter(match=f"{queue}*"))
    assert lists == [broker_list]
    assert broker_list.startswith(queue)
    by_kombu = json.loads(redis.rpop(broker_list))
    by_pulse = json.loads(message)
    # and apart from per-message ids they are the same message
    assert strip(by_pulse) == strip(by_kombu)
    assert by_pulse["headers"]["id"] == by_pulse["properties"]["correlation_id"]


def test_a_bare_send_task_is_routed_to_its_jobs_queue(settings: Settings, redis: Redis) -> None:
    # given a stored job on queue Q of tenant globex, at priority 9
    app = create_celery(settings)
    job = Job(
        job_id=new_job_id(),
        tenant_id="globex",
        job_type="diag.echo",
        queue="t-router",
        created_at=utc_now(),
        priority=9,
    )
    JobStore(redis).create(job)
    # when someone sends pulse.run_job for it naming no queue
    app.send_task(RUN_JOB_TASK, args=(job.job_id,))
    # then the router put it where Pulse itself would have
    _, broker_list = encode_message(app, job)
    assert redis.llen(broker_list) == 1
    assert broker_list == "t-router"  # kombu's list for priority 9 is the queue's own name
    redis.delete(broker_list)


def test_inline_publishing_only_when_the_broker_is_the_job_store(settings: Settings) -> None:
    assert publishes_inline(settings)
    assert not publishes_inline(replace(settings, broker_url="amqp://guest@localhost//"))
    assert not publishes_inline(replace(settings, broker_url=settings.redis_url + "1"))


def test_a_batch_of_delayed_jobs_waits_parked_in_redis_whatever_another_broker_does(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given an API whose broker is a Redis of its own (another broker: jobs due now wait in
    # their ready sets and delayed jobs are parked in the job store's Redis, both for the
    # workers to publish), and diag.sleep routed to a queue of its own
    broker = EmbeddedRedis(tmp_path / "broker", persist=False).start()
    try:
        queue, other = "t-partial-publish", "t-partial-publish-b"
        tenants = write_tenants_file(tmp_path / "tenants.toml", extra=f'[job_types."diag.sleep"]\nqueue = "{other}"\n')
        api_settings = replace(settings, broker_url=broker.url, default_queue=queue, tenants_file=tenants)
        assert not publishes_inline(api_settings)
        announce(redis, ["diag.echo", "diag.sleep"], 60)
        client = create_app(api_settings).test_client()
        broker_redis = connect(broker.url)
        pending_before = JobStore(redis).pending("acme")
        # and a broker that refuses every write to that queue's list (WRONGTYPE)
        app = create_celery(api_settings)
        blocked = Job(job_id="x", tenant_id="acme", job_type="diag.sleep", queue=other, created_at=utc_now())
        _, blocked_list = encode_message(app, blocked)
        broker_redis.set(blocked_list.split("\x06")[0], "not a list")
        # when a batch of 30 delayed jobs is submitted whose 11th job onwards alternate
        # diag.sleep and diag.echo
        jobs = [
            {
                "jobType": "diag.sleep" if n >= 10 and n % 2 == 0 else "diag.echo",
                "payload": {"n": n},
                "idempotencyKey": f"pp-{n}",
                "options": {"delaySeconds": 60},
            }
            for n in range(30)
        ]
        response = client.post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
        # then every job was accepted: none needed the broker at submit
        items = response.get_json()["items"]
        assert [item["status"] for item in items] == [202] * 30
        accepted = [item["job"]["jobId"] for item in items]
        # and each is scheduled, parked once in the job store's Redis without a message, and
        # nothing is on the broker (the workers' tick publishes each when it is due)
        assert all(redis.hget(keys.job(job_id), "state") == "scheduled" for job_id in accepted)
        assert all(score is not None for score in redis.zmscore(keys.PARKED_UNTIL, accepted))
        assert redis.hmget(keys.PARKED_MESSAGES, accepted) == ["\n"] * 30
        assert _all_messages(broker_redis, queue) == [] and _all_messages(broker_redis, other) == []
        # and the backlog counts each once
        assert JobStore(redis).pending("acme") == pending_before + 30
        # and the same batch sent again replays each job, adding nothing
        again = client.post("/v1/batches", json={"jobs": jobs}, headers=auth("acme")).get_json()["items"]
        assert [item["job"]["jobId"] for item in again] == accepted
        assert JobStore(redis).pending("acme") == pending_before + 30
        for job_id in accepted:  # no worker reads these queues
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme")).status_code == 200
        assert JobStore(redis).pending("acme") == pending_before
    finally:
        broker.stop()


def _all_messages(broker: Redis, queue: str) -> list[str]:
    lists = [name for name in broker.scan_iter(match=f"{queue}*") if broker.type(name) == "list"]
    return [raw for name in lists for raw in broker.lrange(name, 0, -1)]
