"""``pulse_queue_depth`` and ``pulse_tenant_waiting``: how many jobs wait on each queue, read at
scrape time from the broker (Redis lists, or RabbitMQ queues) and from the dispatcher's ready
sets (``pulse_core.store.dispatch``).

It lives with the broker because it reads the broker's own lists; the metrics room
(``pulse_core.telemetry``) never imports the Celery setup. A scrape reads the active tenants
of each queue only, so idle tenants cost it nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from celery import Celery
from kombu import Connection
from kombu.exceptions import ChannelError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis

from pulse_core import keys
from pulse_core.broker.celery_app import waiting_lists

log = logging.getLogger("pulse.metrics")


def _ready_counts(store: Redis, queues: list[str]) -> list[dict[str, int]]:
    """Per queue: active tenant -> jobs in its ready set (two pipelined round trips)."""
    with store.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zrange(keys.active(queue), 0, -1)
        tenants: list[list[str]] = pipe.execute()
    with store.pipeline(transaction=False) as pipe:
        for queue, names in zip(queues, tenants, strict=True):
            for tenant in names:
                pipe.zcard(keys.ready(queue, tenant))
        counts = iter(pipe.execute())
    return [{tenant: int(next(counts)) for tenant in names} for names in tenants]


class _QueueDepth(Collector):
    """``pulse_queue_depth{queue}``: jobs waiting on each known queue (on the broker and in
    the ready sets); ``pulse_tenant_waiting{queue,tenant}``: each active tenant's jobs in
    its ready set of the queue."""

    def __init__(self, store: Redis, queues: Callable[[], Iterable[str]]) -> None:
        self._store = store
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "pulse_queue_depth",
            "Jobs waiting on a queue (not yet taken by a worker): on the broker and in the ready sets.",
            labels=["queue"],
        )
        tenants = GaugeMetricFamily(
            "pulse_tenant_waiting",
            "A tenant's jobs waiting for the fair dispatcher on a queue (tenants with none are left out).",
            labels=["queue", "tenant"],
        )
        queues = sorted(set(self._queues()))
        try:
            ready = _ready_counts(self._store, queues)
            depths = self.depths(queues)
        except Exception as exc:  # a scrape must answer even when Redis or the broker is down
            log.warning("queue depth not read: %s", exc)
            return
        for queue, depth, waiting in zip(queues, depths, ready, strict=True):
            family.add_metric([queue], float(depth + sum(waiting.values())))
            for tenant, count in sorted(waiting.items()):
                tenants.add_metric([queue, tenant], float(count))
        yield family
        yield tenants

    def depths(self, queues: list[str]) -> list[int]:
        """Messages waiting on each queue on the broker."""
        raise NotImplementedError


class QueueDepthCollector(_QueueDepth):
    """On a Redis broker: a queue's messages wait in its lists, one per priority step
    (``celery_app.waiting_lists``); one more pipelined round trip (``LLEN``)."""

    def __init__(self, store: Redis, broker: Redis, queues: Callable[[], Iterable[str]]) -> None:
        super().__init__(store, queues)
        self._broker = broker

    def depths(self, queues: list[str]) -> list[int]:
        lists = [waiting_lists(queue) for queue in queues]
        with self._broker.pipeline(transaction=False) as pipe:
            for names in lists:
                for name in names:
                    pipe.llen(name)
            lengths = iter(pipe.execute())
        return [sum(next(lengths) for _ in names) for names in lists]


class AmqpQueueDepthCollector(_QueueDepth):
    """On RabbitMQ: each queue's ready messages, read with a passive ``queue.declare`` at
    scrape time. A queue not declared yet holds nothing."""

    def __init__(self, store: Redis, app: Celery, queues: Callable[[], Iterable[str]]) -> None:
        super().__init__(store, queues)
        self._app = app

    def depths(self, queues: list[str]) -> list[int]:
        with self._app.connection_for_read() as connection:
            return [_ready(connection, queue) for queue in queues]


def ready_messages(app: Celery, queue: str) -> int:
    """Ready messages on the AMQP queue ``queue`` (the dispatcher's depth on RabbitMQ)."""
    with app.connection_for_read() as connection:
        return _ready(connection, queue)


def _ready(connection: Connection, name: str) -> int:
    """Ready messages on the AMQP queue ``name`` (0 when it does not exist yet)."""
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue=name, passive=True).message_count)
    except ChannelError:  # NOT_FOUND closes the channel: nothing waits there
        return 0
    finally:
        with contextlib.suppress(Exception):
            channel.close()
