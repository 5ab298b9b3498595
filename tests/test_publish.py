"""The message the admission script pushes is the one kombu's Redis transport would push."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from redis import Redis

from pulse_core import keys
from pulse_core.broker.celery_app import (
    RUN_JOB_TASK,
    create_celery,
    encode_message,
    publish_job,
    publishes_inline,
)
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore

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
    # then kombu put its message on exactly the list Pulse would push to (the lane's
    # list for the priority), and nowhere else
    lists = sorted(k for k in redis.scan_iter(match=f"{queue}*"))
    assert lists == [broker_list]
    assert broker_list.startswith(f"{queue}/acme")
    by_kombu = json.loads(redis.rpop(broker_list))
    by_pulse = json.loads(message)
    # and apart from per-message ids they are the same message
    assert strip(by_pulse) == strip(by_kombu)
    assert by_pulse["headers"]["id"] == by_pulse["properties"]["correlation_id"]


def test_a_bare_send_task_is_routed_to_its_jobs_lane(settings: Settings, redis: Redis) -> None:
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
    assert redis.sismember(keys.lanes("t-router"), "globex")
    redis.delete(broker_list)


def test_inline_publishing_only_when_the_broker_is_the_job_store(settings: Settings) -> None:
    assert publishes_inline(settings)
    assert not publishes_inline(replace(settings, broker_url="amqp://guest@localhost//"))
    assert not publishes_inline(replace(settings, broker_url=settings.redis_url + "1"))
