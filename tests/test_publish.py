"""The message the admission script pushes is the one kombu's Redis transport would push."""

from __future__ import annotations

import json
from dataclasses import replace

from redis import Redis

from pulse_core.celery_setup import create_celery, encode_message, publish_job, publishes_inline
from pulse_core.jobs import Job, utc_now
from pulse_core.settings import Settings

VARYING = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}


def strip(message: dict) -> dict:
    """The envelope without the per-message ids (and Celery's unset ``ignore_result``)."""
    headers = {k: v for k, v in message["headers"].items()
               if k not in VARYING and k != "ignore_result"}  # fmt: skip
    props = {k: v for k, v in message["properties"].items() if k not in VARYING}
    return {**message, "headers": headers, "properties": props}


def test_inline_message_matches_what_celery_publishes(settings: Settings, redis: Redis) -> None:
    # given one job published through Celery/kombu and the same job encoded by Pulse
    queue = "t-publish-compare"
    app = create_celery(settings)
    job = Job(job_id="job-1", tenant_id="acme", job_type="diag.echo", queue=queue,
              created_at=utc_now())  # fmt: skip
    publish_job(app, job)
    by_kombu = json.loads(redis.rpop(queue))
    by_pulse = json.loads(encode_message(app, job))
    redis.delete(queue)
    # then apart from per-message ids they are the same message
    assert strip(by_pulse) == strip(by_kombu)
    assert by_pulse["headers"]["id"] == by_pulse["properties"]["correlation_id"]


def test_inline_publishing_only_when_the_broker_is_the_job_store(settings: Settings) -> None:
    assert publishes_inline(settings)
    assert not publishes_inline(replace(settings, broker_url="amqp://guest@localhost//"))
    assert not publishes_inline(replace(settings, broker_url=settings.redis_url + "1"))
