"""Fair dispatch: jobs wait in Pulse's own structures; the broker queue stays short.

Each queue has, in Redis (``pulse_core.keys``):

- per tenant, a **ready set** of its waiting jobs, highest priority first, then first
  come first served (``keys.ready``);
- the **active tenants**, ordered by virtual time (``keys.active``): the tenant with the
  lowest goes next, and its virtual time grows by ``1 / weight`` per job dispatched
  (``weight`` from the tenants file, default 1). A tenant that becomes active starts at
  the virtual time of the last job dispatched, so it is served next and idle time earns
  it no credit. A tenant whose ready set empties leaves, with its weight: idle tenants
  cost nothing;
- the messages of waiting jobs (their records' field ``message``), pushed as they are.

The Celery queue itself is kept short: a **dispatch** moves jobs onto it, in that order,
while it holds fewer than its **depth** of messages: the summed pool concurrency its live
workers announced (``pulse_core.store.capacity``; at least 1), read at most every
``CAPACITY_MAX_AGE`` seconds per process and passed to the scripts as an argument (no
Redis command added per submit), or ``PULSE_DISPATCH_DEPTH`` when that is set. Admission dispatches at once,
in the admission script itself (``guards/lua/includes/admit_one.lua`` places the job with
``includes/enqueue_job.lua`` and the run dispatches each queue it found short and placed jobs on: no added
call, no added latency when the queue is short); the scripts that end an attempt (``finalize``,
``schedule_retry``) dispatch the next job in the same call; and the workers' sweep
dispatches every queue with active tenants (``dispatch_all``), so a queue refills even
if no attempt ends (a worker restarted, messages taken by stale copies).

Priority orders a tenant's own jobs only; between tenants the order is the fair one. A
tenant's flood delays another tenant's next job by at most the depth (the jobs already on
the queue) plus the ones running. Each dispatch costs O(log tenants) in Redis.

With another broker (RabbitMQ) the scripts cannot push onto the broker: jobs wait in
the same ready sets and the workers take them in the same order (``take``) and publish
them through kombu while the broker queue holds fewer ready messages than the same
depth (``pulse_worker.guardian``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from redis import Redis

from pulse_core import keys
from pulse_core.lua_scripts import LuaScript
from pulse_core.store.capacity import live_capacity

_DISPATCH = LuaScript("pulse_core.store", "dispatch", int)
_DISPATCH_POP = LuaScript("pulse_core.store", "dispatch_pop", list)

#: The most queues whose dispatch keys ``Dispatcher.spec`` keeps made (queues come from configuration).
_SPECS_KEPT = 1024
#: How long a process uses the workers' announced capacity before it reads it again (seconds).
CAPACITY_MAX_AGE = 2.0
#: The broker lists of a queue, one per kombu priority step (0, 3, 6, 9), in that order.
BrokerLists = Callable[[str], Sequence[str]]


class Dispatcher:
    """Moves waiting jobs from their ready sets onto their queue's broker lists, fairly."""

    def __init__(
        self,
        redis: Redis,
        *,
        depth: int | None,
        broker_lists: BrokerLists | None,
        max_age: float = CAPACITY_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``depth``: how many messages each queue's broker list holds (``PULSE_DISPATCH_DEPTH``);
        ``None`` derives it from the capacity the queue's live workers announced, read at
        most every ``max_age`` seconds. ``broker_lists``: the queue's kombu lists when the
        broker is this Redis (the scripts push onto them); ``None`` for another broker
        (``take`` and publish)."""
        self._redis = redis
        self.fixed_depth = depth
        self._broker_lists = broker_lists
        self._max_age = max_age
        self._clock = clock
        self._dispatch = _DISPATCH.register(redis)
        self._specs: dict[str, tuple[list[str], list[Any]]] = {}
        self._depths: dict[str, tuple[int, float]] = {}
        self._dispatch_pop = _DISPATCH_POP.register(redis)

    @property
    def inline(self) -> bool:
        """Whether the scripts push messages onto the broker (the broker is this Redis)."""
        return self._broker_lists is not None

    def depth(self, queue: str) -> int:
        """How many messages ``queue``'s broker list is filled up to: ``PULSE_DISPATCH_DEPTH``
        when set, else the summed concurrency of its live workers, at least 1 (with none
        announced yet, one message still goes, and the workers' tick and each finalize
        dispatch more once they run). Read from Redis at most every ``max_age`` seconds."""
        if self.fixed_depth is not None:
            return self.fixed_depth
        self.refresh([queue])
        return self._depths[queue][0]

    def refresh(self, queues: Iterable[str]) -> None:
        """Read, in one round trip, the capacity of those of ``queues`` not read within
        ``max_age`` (nothing with a fixed depth)."""
        if self.fixed_depth is not None:
            return
        now = self._clock()
        stale = [q for q in queues if (found := self._depths.get(q)) is None or now - found[1] >= self._max_age]
        if not stale:
            return
        capacity = live_capacity(self._redis, stale)
        if len(self._depths) + len(stale) > _SPECS_KEPT:
            self._depths.clear()
        for queue in stale:
            self._depths[queue] = (max(1, capacity[queue]), now)

    def spec(self, queue: str) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV a script with ``includes/dispatch.lua`` takes to dispatch ``queue``
        (without the broker lists when they are not this Redis's), at its current depth; the
        keys are made once per queue (every submit asks), each caller gets its own copy."""
        found = self._specs.get(queue)
        if found is None:
            lists = list(self._broker_lists(queue)) if self._broker_lists is not None else []
            if self._broker_lists is not None and len(lists) != 4:
                raise ValueError(f"expected 4 broker lists per queue (kombu priority steps 0, 3, 6, 9), got {lists}")
            if len(self._specs) >= _SPECS_KEPT:
                self._specs.clear()
            made = [keys.active(queue), keys.dispatch_state(queue), keys.DISPATCH_QUEUES]
            found = self._specs[queue] = ([*made, *lists], [queue, keys.ready_prefix(queue), keys.job("")])
        return list(found[0]), [*found[1], self.depth(queue)]

    def take(self, queue: str, n: int) -> list[str]:
        """Up to ``n`` waiting jobs of ``queue`` in fair order, out of their ready sets: their
        ids, for the caller to publish (a broker other than this Redis)."""
        keys_, args = self.spec(queue)
        found: list[str] = self._dispatch_pop(keys=keys_[:3], args=[*args[:3], n])
        return found

    def queues(self) -> list[str]:
        """The queues with waiting jobs."""
        return sorted(self._redis.smembers(keys.DISPATCH_QUEUES))  # type: ignore[arg-type]

    def dispatch(self, queue: str) -> int:
        """Fill ``queue``'s broker lists up to its depth; how many messages were pushed."""
        keys_, args = self.spec(queue)
        return int(self._dispatch(keys=keys_, args=args))

    def dispatch_all(self, consumed: Collection[str] | None = None) -> int:
        """Dispatch every queue with active tenants (of ``consumed`` only, when given: a
        worker's queues), in one round trip (the workers' tick)."""
        queues = [q for q in self.queues() if consumed is None or q in consumed]
        if not self.inline or not queues:
            return 0
        self.refresh(queues)
        with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                keys_, args = self.spec(queue)
                self._dispatch.queue(pipe, keys=keys_, args=args)
            return sum(int(n) for n in pipe.execute())

    def waiting(self, queue: str) -> dict[str, int]:
        """Tenant -> jobs in its ready set of ``queue`` (active tenants only)."""
        tenants: list[str] = self._redis.zrange(keys.active(queue), 0, -1)  # type: ignore[assignment]
        if not tenants:
            return {}
        with self._redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.zcard(keys.ready(queue, tenant))
            counts = pipe.execute()
        return {tenant: int(n) for tenant, n in zip(tenants, counts, strict=True) if n}
