"""Pulse on RabbitMQ, the second broker: jobs published to it, counted on it.

These tests need a RabbitMQ at ``PULSE_TEST_AMQP_URL`` (default 127.0.0.1:5672, guest);
where none answers they skip and say so. CI's machine runs one.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import replace
from urllib.parse import urlparse

import pytest
from redis import Redis

from pulse_api import create_app
from pulse_core.broker.celery_app import create_celery
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import auth, scrape_api

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=2):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _reachable(AMQP_URL), reason=f"no RabbitMQ answers at {AMQP_URL} (start one, or set TEST_AMQP_URL)"
)


def test_jobs_queued_on_rabbitmq_are_counted_in_the_queue_depth(settings: Settings, redis: Redis) -> None:
    # given an API whose broker is RabbitMQ, on a queue of this test's own (no worker reads it)
    queue = f"t-amqp-depth-{uuid.uuid4().hex[:8]}"
    api_settings = replace(settings, broker_url=AMQP_URL, default_queue=queue)
    announce(redis, ["diag.echo"], 60)
    client = create_app(api_settings).test_client()
    app = create_celery(api_settings)
    try:
        # when 5 jobs of acme and 3 of globex are submitted
        for tenant, n in (("acme", 5), ("globex", 3)):
            for _ in range(n):
                response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth(tenant))
                assert response.status_code == 202, response.get_data(as_text=True)
        # then the queue depth the API exports counts all 8, waiting on the one queue
        assert f'pulse_queue_depth{{queue="{queue}"}} 8.0' in scrape_api(client)
    finally:
        with app.connection_for_write() as connection:
            channel = connection.channel()
            for name in (queue,):
                try:
                    channel.queue_delete(name)
                except Exception:  # never declared: nothing to delete
                    channel = connection.channel()
