"""Which jobTypes live workers can run, shared through Redis.

Workers announce their registered jobTypes at start-up and on a heartbeat; the
API reads the live set, so it can refuse an unknown jobType at submit time
without importing any handler code. An announcement lapses ``ttl`` seconds after
the last heartbeat of the last worker that made it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis

from pulse_core import keys
from pulse_core.lua_scripts import LuaScript
from pulse_core.policy import RetryPolicy
from pulse_core.redis_client import seconds_of, server_time

log = logging.getLogger("pulse.metrics")


#: Drops lapsed jobTypes and their policies in one step (``lua/forget_lapsed_job_types.lua``).
_FORGET_LAPSED = LuaScript("pulse_core.store", "forget_lapsed_job_types", int)
#: Announces jobTypes on each queue a worker consumes (``lua/announce_live.lua``).
_ANNOUNCE_ON_QUEUES = LuaScript("pulse_core.store", "announce_live", int)


def announce(
    redis: Redis,
    job_types: Iterable[str],
    ttl_seconds: int,
    policies: Mapping[str, RetryPolicy] | None = None,
    queues: Iterable[str] = (),
) -> None:
    """Mark ``job_types`` live for the next ``ttl_seconds`` and drop lapsed ones (with their
    policies: ``keys.JOB_TYPE_POLICIES`` ends as the announcements do), and live on each of
    ``queues`` (the queues the announcing worker consumes: ``keys.queue_job_types``).

    ``policies`` (jobType -> its declared retry policy) lets the API resolve a
    job's effective retries and time limit when it accepts it.
    """
    job_types = list(job_types)
    now = server_time(redis)  # not this host's clock: one running ahead drops others' live jobTypes
    members = {job_type: now + ttl_seconds for job_type in job_types}
    with redis.pipeline(transaction=False) as pipe:
        if members:
            # GT: another worker's later expiry is never shortened by ours.
            pipe.zadd(keys.JOB_TYPES, members, gt=True)
        if policies:
            pipe.hset(
                keys.JOB_TYPE_POLICIES,
                mapping={job_type: p.to_json() for job_type, p in policies.items()},
            )
        _FORGET_LAPSED.register(redis).queue(pipe, keys=[keys.JOB_TYPES, keys.JOB_TYPE_POLICIES], args=[repr(now)])
        on_queues = [keys.queue_job_types(queue) for queue in dict.fromkeys(queues)]
        if on_queues and job_types:
            _ANNOUNCE_ON_QUEUES.register(redis).queue(pipe, keys=on_queues, args=[ttl_seconds, "shared", *job_types])
        pipe.execute()


def _announced(redis: Redis) -> tuple[float, list[tuple[str, float]]]:
    """(Redis' clock now, every announced jobType with when it lapses), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(keys.JOB_TYPES, 0, -1, withscores=True)
        clock, announced = pipe.execute()
    return seconds_of(clock), announced


def live_job_types(redis: Redis) -> frozenset[str]:
    """The jobTypes some live worker has announced (by Redis' clock), in one round trip."""
    now, announced = _announced(redis)
    return frozenset(job_type for job_type, expires_at in announced if expires_at > now)


def live_on_queue(redis: Redis, job_type: str, queue: str) -> bool:
    """Whether a live worker consuming ``queue`` announced ``job_type`` (by Redis' clock)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zscore(keys.queue_job_types(queue), job_type)
        clock, lapses = pipe.execute()
    return lapses is not None and float(lapses) > seconds_of(clock)


def job_type_policies(redis: Redis) -> dict[str, RetryPolicy]:
    """The retry policy each jobType's workers declared (unreadable entries are skipped)."""
    raw: dict[str, str] = redis.hgetall(keys.JOB_TYPE_POLICIES)  # type: ignore[assignment]
    found: dict[str, RetryPolicy] = {}
    for job_type, text in raw.items():
        try:
            found[job_type] = RetryPolicy.from_json(text)
        except (ValueError, TypeError):
            continue
    return found


class JobTypeDirectory:
    """A cached view of the live jobTypes, refreshed at most every ``max_age`` seconds.

    A miss refreshes sooner (after ``miss_age``), so a worker that has just
    started is seen almost at once while bad input cannot hammer Redis.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        max_age: float = 1.0,
        miss_age: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._max_age = max_age
        self._miss_age = miss_age
        self._clock = clock
        self._known: frozenset[str] = frozenset()
        self._policies: dict[str, RetryPolicy] = {}
        self._loaded_at = float("-inf")

    def is_live(self, job_type: str) -> bool:
        """Whether some live worker can run ``job_type``."""
        age = self._clock() - self._loaded_at
        if age > self._max_age or (job_type not in self._known and age > self._miss_age):
            self._known = live_job_types(self._redis)
            self._policies = job_type_policies(self._redis)
            self._loaded_at = self._clock()
        return job_type in self._known

    def policy(self, job_type: str) -> RetryPolicy:
        """The retry policy declared for ``job_type`` (call ``is_live`` first); else defaults."""
        return self._policies.get(job_type) or RetryPolicy()


class LiveJobTypesCollector(Collector):
    """``pulse_job_type_live{job_type}`` and ``pulse_redis_up``, read from Redis at scrape time.

    ``pulse_job_type_live`` is 1 for each jobType some live worker announced and 0 for one
    whose announcement lapsed (no worker heartbeat within the TTL) but is not yet trimmed;
    a jobType whose workers are all gone is 0 and then absent. ``pulse_redis_up`` is 1 when
    this read answered, 0 when Redis did not (no jobType series then). One round trip;
    times are Redis' clock.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pulse_redis_up", "1 when Redis answered this scrape's read, else 0.")
        try:
            now, announced = _announced(self._redis)
        except Exception as exc:  # a scrape must answer even when Redis is down
            log.warning("live jobTypes not read: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        live = GaugeMetricFamily(
            "pulse_job_type_live",
            "1 while some live worker has announced the jobType, 0 once its announcement lapsed.",
            labels=["job_type"],
        )
        for job_type, expires_at in announced:
            live.add_metric([job_type], 1.0 if expires_at > now else 0.0)
        yield live
