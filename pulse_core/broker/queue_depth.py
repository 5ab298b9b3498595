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


class _QueueDepth(Collector):
    """``pulse_queue_depth{queue}``: messages waiting on each known queue and its tenant lanes,
    read at scrape time. Which tenants have a lane on a queue is the job store's to say
    (``keys.lanes``, written by admission); how deep a queue is, the broker's."""

    def __init__(self, store: Redis, queues: Callable[[], Iterable[str]]) -> None:
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
                found = pipe.execute()
            # keys.lanes holds tenant ids; the lanes' own names are lane(queue, tenant).
            lanes = [
                [lane(queue, tenant) for tenant in sorted(tenants)]
                for queue, tenants in zip(queues, found, strict=True)
            ]
            depths = self.depths(queues, lanes)
        except Exception as exc:  # a scrape must answer even when Redis or the broker is down
            log.warning("queue depth not read: %s", exc)
            return
        for queue, depth in zip(queues, depths, strict=True):
            family.add_metric([queue], float(depth))
        yield family

    def depths(self, queues: list[str], lanes: list[list[str]]) -> list[int]:
        """Messages waiting on each queue and its lanes (``lanes[i]`` are ``queues[i]``'s)."""
        raise NotImplementedError


class QueueDepthCollector(_QueueDepth):
    """On a Redis broker: a queue's messages wait in its own lists and its tenant lanes',
    one list per priority step (``celery_app.waiting_lists``); two pipelined round trips
    per scrape (lanes from the job store, then ``LLEN`` on the broker)."""

    def __init__(self, store: Redis, broker: Redis, queues: Callable[[], Iterable[str]]) -> None:
        super().__init__(store, queues)
        self._broker = broker

    def depths(self, queues: list[str], lanes: list[list[str]]) -> list[int]:
        lists = [waiting_lists(queue, names) for queue, names in zip(queues, lanes, strict=True)]
        with self._broker.pipeline(transaction=False) as pipe:
            for names in lists:
                for name in names:
                    pipe.llen(name)
            lengths = iter(pipe.execute())
        return [sum(next(lengths) for _ in names) for names in lists]


class AmqpQueueDepthCollector(_QueueDepth):
    """On RabbitMQ: each queue's and lane's ready messages, read with a passive
    ``queue.declare`` at scrape time. A queue not declared yet holds nothing."""

    def __init__(self, store: Redis, app: Celery, queues: Callable[[], Iterable[str]]) -> None:
        super().__init__(store, queues)
        self._app = app

    def depths(self, queues: list[str], lanes: list[list[str]]) -> list[int]:
        with self._app.connection_for_read() as connection:
            return [
                sum(_ready(connection, name) for name in (queue, *names))
                for queue, names in zip(queues, lanes, strict=True)
            ]


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
