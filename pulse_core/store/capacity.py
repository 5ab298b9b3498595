"""How many jobs the live workers of each queue can run at once, shared through Redis.

Each worker announces, with its jobTypes (``pulse_worker.announcer``: at start and every
third of ``PULSE_JOB_TYPE_TTL_SECONDS``), its pool concurrency for each queue it consumes
(``keys.queue_capacity``). An announcement lapses ``ttl`` seconds after it was made, so a
dead worker's capacity leaves by itself; a worker that stops withdraws its own at once.

The fair dispatcher (``pulse_core.store.dispatch``) keeps a queue's broker list filled up
to this capacity (summed over the queue's live workers, at least 1) unless
``PULSE_DISPATCH_DEPTH`` is set: enough messages for every pool process to find its next
job on the broker, and no more committed ahead of a tenant that submits during another's
flood.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from redis import Redis

from pulse_core import keys
from pulse_core.lua_scripts import LuaScript
from pulse_core.redis_client import seconds_of

#: Announces a worker's capacity on its queues (``lua/announce_live.lua``).
_ANNOUNCE = LuaScript("pulse_core.store", "announce_live", int)


def member(hostname: str, concurrency: int) -> str:
    """The member a worker announces: ``<hostname>:<concurrency>``."""
    return f"{hostname}:{concurrency}"


def announce_capacity(redis: Redis, hostname: str, concurrency: int, queues: Iterable[str], ttl_seconds: float) -> None:
    """Mark ``hostname``'s ``concurrency`` live on each of ``queues`` for ``ttl_seconds``;
    drop the lapsed announcements of those queues and let each key expire with its last live
    one (``lua/announce_live.lua``, one round trip). Times are Redis' clock, not this
    host's: a worker whose clock runs ahead neither drops the others' live announcements nor
    makes its own last longer, and one with a shorter TTL does not cut the others' short."""
    wanted = [keys.queue_capacity(queue) for queue in dict.fromkeys(queues)]
    if wanted:
        _ANNOUNCE.register(redis)(keys=wanted, args=[repr(float(ttl_seconds)), "own", member(hostname, concurrency)])


def withdraw_capacity(redis: Redis, hostname: str, concurrency: int, queues: Iterable[str]) -> None:
    """Remove ``hostname``'s announcement from ``queues`` (a worker that stops)."""
    name = member(hostname, concurrency)
    with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zrem(keys.queue_capacity(queue), name)
        pipe.execute()


def _concurrency(name: str) -> int:
    _, _, text = name.rpartition(":")
    try:
        return max(0, int(text))
    except ValueError:  # not a member this module wrote: counts for nothing
        return 0


def live_capacity(redis: Redis, queues: Iterable[str]) -> Mapping[str, int]:
    """Queue -> the summed concurrency its live workers announced (0: none), by Redis' clock,
    in one round trip."""
    wanted = list(dict.fromkeys(queues))
    if not wanted:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        for queue in wanted:
            pipe.zrange(keys.queue_capacity(queue), 0, -1, withscores=True)
        clock, *found = pipe.execute()
    at = seconds_of(clock)
    return {
        queue: sum(_concurrency(name) for name, until in entries if until > at)
        for queue, entries in zip(wanted, found, strict=True)
    }
