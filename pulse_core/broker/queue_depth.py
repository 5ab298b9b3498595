"""``pulse_queue_depth``: how many messages wait on each queue, read from the broker at scrape time.

It lives with the broker because it reads the broker's own lists; the metrics room
(``pulse_core.telemetry``) never imports the Celery setup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

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
