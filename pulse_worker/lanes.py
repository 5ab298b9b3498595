"""A worker consuming a queue consumes every tenant lane of it (``pulse_core.broker.routing``).

At start-up (``celeryd_after_setup``) the lanes registered in Redis for each queue
the worker was given (``-Q``, or the shared queue) are added to what it consumes;
then a consumer step looks for new lanes every ``LANE_POLL_SECONDS`` on the event
loop's own timer (kombu channels are not thread-safe), so a new tenant's first job
is taken within about a second, with no worker restart. A lane given by name
(``-Q pulse/acme``, what ``pulse worker --tenants acme`` passes) is consumed alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import bootsteps
from redis import Redis

from pulse_core import keys
from pulse_core.broker.routing import LANE_POLL_SECONDS, is_lane, lane

log = logging.getLogger("pulse.worker")


def lanes_of(redis: Redis, queues: Iterable[str]) -> list[str]:
    """Every registered lane of the (non-lane) ``queues``."""
    base = [q for q in queues if not is_lane(q)]
    if not base:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for queue in base:
            pipe.smembers(keys.lanes(queue))
        members: list[set[str]] = pipe.execute()
    return [lane(q, tenant) for q, tenants in zip(base, members, strict=True) for tenant in sorted(tenants)]


def add_lanes_at_setup(app: Any, redis: Redis) -> None:
    """Before the worker starts consuming: add the lanes of the queues it was given."""
    queues = app.amqp.queues
    for name in lanes_of(redis, [q.name for q in queues.consume_from.values()]):
        queues.select_add(name)


def lane_watcher_step(redis: Redis) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep that starts consuming new lanes of the worker's queues."""

    class LaneWatcher(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._timer: Any = None

        def start(self, c: Any) -> None:
            self._timer = c.timer.call_repeatedly(LANE_POLL_SECONDS, self._poll, (c,))

        def stop(self, c: Any) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        shutdown = stop

        def _poll(self, c: Any) -> None:
            try:
                consumer = c.task_consumer
                if consumer is None:
                    return
                for name in lanes_of(redis, [q.name for q in consumer.queues]):
                    if not consumer.consuming_from(name):
                        c.add_task_queue(name)
            except Exception:  # a Redis blip must not stop the event loop
                log.warning("could not look for new lanes; will retry", exc_info=True)

    return LaneWatcher
