"""Which jobTypes live workers can run, shared through Redis.

Workers announce their registered jobTypes at start-up and on a heartbeat; the
API reads the live set, so it can refuse an unknown jobType at submit time
without importing any handler code. An announcement lapses ``ttl`` seconds after
the last heartbeat of the last worker that made it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from redis import Redis

from pulse_core import keys
from pulse_core.policy import RetryPolicy


def announce(
    redis: Redis,
    job_types: Iterable[str],
    ttl_seconds: int,
    policies: Mapping[str, RetryPolicy] | None = None,
) -> None:
    """Mark ``job_types`` live for the next ``ttl_seconds`` and drop lapsed ones.

    ``policies`` (jobType -> its declared retry policy) lets the API resolve a
    job's effective retries and time limit when it accepts it.
    """
    now = time.time()
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
        pipe.zremrangebyscore(keys.JOB_TYPES, "-inf", now)
        pipe.execute()


def live_job_types(redis: Redis) -> frozenset[str]:
    """The jobTypes some live worker has announced."""
    members: list[str] = redis.zrangebyscore(keys.JOB_TYPES, time.time(), "+inf")  # type: ignore[assignment]
    return frozenset(members)


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
