"""Shared by the RabbitMQ tests: where RabbitMQ is, whether it answers, and cleaning up queues."""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlparse

import pytest
from celery import Celery

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=2):
            return True
    except OSError:
        return False


#: Marks a test module that needs RabbitMQ: skipped, with the reason, where none answers.
needs_rabbitmq = pytest.mark.skipif(
    not reachable(AMQP_URL), reason=f"no RabbitMQ answers at {AMQP_URL} (start one, or set TEST_AMQP_URL)"
)


def amqp_url_via(port: int) -> str:
    """``AMQP_URL`` with its port replaced: the same RabbitMQ reached through a proxy on ``port``."""
    parsed = urlparse(AMQP_URL)
    return parsed._replace(netloc=f"{parsed.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}").geturl()


def delete_queue(app: Celery, queue: str) -> None:
    with app.connection_for_write() as connection, contextlib.suppress(Exception):  # never declared
        connection.channel().queue_delete(queue)
