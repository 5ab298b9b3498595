"""``pulse_queue_depth``: how many messages wait on each queue, read from the broker at scrape time
(Redis lists, or RabbitMQ queues).

It lives with the broker because it reads the broker's own lists; the metrics room
(``pulse_core.telemetry``) never imports the Celery setup.
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
from pulse_core.broker.routing import lane

log = logging.getLogger("pulse.metrics")


class QueueDepthCollector(Collector):
    """``pulse_queue_depth{queue}``: messages waiting on each known queue, read at scrape time.

    A queue's messages wait in its own lists and its tenant lanes', one list per
    priority step (``celery_setup.waiting_lists``): two pipelined round trips per scrape.
    """

    def __init__(self, broker: Redis, queues: Callable[[], Iterable[str]]) -> None:
        self._broker = broker
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "pulse_queue_depth",
            "Messages waiting on a queue (not yet taken by a worker).",
            labels=["queue"],
        )
        queues = sorted(set(self._queues()))
        try:
            with self._broker.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.smembers(keys.lanes(queue))
                lanes = pipe.execute()
            # keys.lanes holds tenant ids; the lanes' own names are lane(queue, tenant).
            lists = [
                waiting_lists(queue, [lane(queue, tenant) for tenant in sorted(found)])
                for queue, found in zip(queues, lanes, strict=True)
            ]
            with self._broker.pipeline(transaction=False) as pipe:
                for names in lists:
                    for name in names:
                        pipe.llen(name)
                lengths = iter(pipe.execute())
        except Exception as exc:  # a scrape must answer even when Redis is down
            log.warning("queue depth not read: %s", exc)
            return
        for queue, names in zip(queues, lists, strict=True):
            family.add_metric([queue], float(sum(next(lengths) for _ in names)))
        yield family


class AmqpQueueDepthCollector(Collector):
    """``pulse_queue_depth{queue}`` on RabbitMQ: each known queue's ready messages and its
    tenant lanes' (``queue/tenant``, whose tenants the job store's Redis lists), read with a
    passive ``queue.declare`` at scrape time. A queue not declared yet holds nothing."""

    def __init__(self, app: Celery, store: Redis, queues: Callable[[], Iterable[str]]) -> None:
        self._app = app
        self._store = store
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "pulse_queue_depth",
            "Messages waiting on a queue (not yet taken by a worker).",
            labels=["queue"],
        )
        queues = sorted(set(self._queues()))
        try:
            with self._store.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.smembers(keys.lanes(queue))
                lanes = pipe.execute()
            with self._app.connection_for_read() as connection:
                depths = [
                    sum(_ready(connection, name) for name in (queue, *(lane(queue, t) for t in sorted(found))))
                    for queue, found in zip(queues, lanes, strict=True)
                ]
        except Exception as exc:  # a scrape must answer even when the broker is down
            log.warning("queue depth not read: %s", exc)
            return
        for queue, depth in zip(queues, depths, strict=True):
            family.add_metric([queue], float(depth))
        yield family


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
