"""Which jobTypes live workers can run, shared through Redis.

Workers announce their registered jobTypes at start-up and on a heartbeat; the
API reads the live set, so it can refuse an unknown jobType at submit time
without importing any handler code. An announcement lapses ``ttl`` seconds after
the last heartbeat of the last worker that made it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from redis import Redis

from pulse_core import keys


def announce(redis: Redis, job_types: Iterable[str], ttl_seconds: int) -> None:
    """Mark ``job_types`` live for the next ``ttl_seconds`` and drop lapsed ones."""
    now = time.time()
    members = {job_type: now + ttl_seconds for job_type in job_types}
    with redis.pipeline(transaction=False) as pipe:
        if members:
            # GT: another worker's later expiry is never shortened by ours.
            pipe.zadd(keys.JOB_TYPES, members, gt=True)
        pipe.zremrangebyscore(keys.JOB_TYPES, "-inf", now)
        pipe.execute()


def live_job_types(redis: Redis) -> frozenset[str]:
    """The jobTypes some live worker has announced."""
    members: list[str] = redis.zrangebyscore(keys.JOB_TYPES, time.time(), "+inf")  # type: ignore[assignment]
    return frozenset(members)


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
        self._loaded_at = float("-inf")

    def is_live(self, job_type: str) -> bool:
        """Whether some live worker can run ``job_type``."""
        age = self._clock() - self._loaded_at
        if age > self._max_age or (job_type not in self._known and age > self._miss_age):
            self._known = live_job_types(self._redis)
            self._loaded_at = self._clock()
        return job_type in self._known
