"""The dead-letter store: per tenant, a sorted set of dead job ids scored by time of death.

Modelled on RQ's ``registry.py``: the index lives in ``keys.tenant_dead_letters``,
the record itself stays in the job store (kept, not expired, while it is a dead
letter). Listing is newest first with an opaque cursor ``"<score>:<jobId>"`` that
stays valid while letters are added or removed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from redis import Redis

from pulse_core import keys
from pulse_core.errors import InvalidParameter
from pulse_core.jobs import Job
from pulse_core.store.job_store import DEFAULT_RETENTION_SECONDS, JobStore

#: Ids read from Redis per round while filling a page or a bulk selection.
_BATCH = 200


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


class DeadLetters:
    """Reads and removes a tenant's dead letters (replay goes through ``JobStore.replay``)."""

    def __init__(self, redis: Redis, store: JobStore, *, retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> None:
        self._redis = redis
        self._store = store
        self._retention = retention_seconds

    def get(self, tenant_id: str, job_id: str) -> Job | None:
        """The dead job, if it is one of ``tenant_id``'s dead letters."""
        if self._redis.zscore(keys.tenant_dead_letters(tenant_id), job_id) is None:
            return None
        return self._store.get_for_tenant(tenant_id, job_id)

    def delete(self, tenant_id: str, job_id: str) -> bool:
        """Drop a dead letter; the job record stays readable until its retention ends."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.tenant_dead_letters(tenant_id), job_id)
            pipe.expire(keys.job(job_id), self._retention)
            removed, _ = pipe.execute()
        return bool(removed)

    def page(self, tenant_id: str, *, limit: int, cursor: str | None = None, job_type: str | None = None) -> Page:
        """Up to ``limit`` dead letters, newest first, after ``cursor``."""
        seen: list[tuple[float, Job]] = []
        for score, job in self._scan(tenant_id, _parse_cursor(cursor), None, job_type):
            if len(seen) == limit:
                last_score, last = seen[-1]
                return Page([j for _, j in seen], f"{last_score!r}:{last.job_id}")
            seen.append((score, job))
        return Page([j for _, j in seen], None)

    def select(
        self,
        tenant_id: str,
        *,
        job_type: str | None = None,
        since_ms: float | None = None,
        until_ms: float | None = None,
        limit: int,
    ) -> list[Job]:
        """Dead letters matching a filter (time of death in epoch ms), newest first."""
        start = (until_ms, "\uffff") if until_ms is not None else None
        found: list[Job] = []
        for _score, job in self._scan(tenant_id, start, since_ms, job_type):
            if len(found) == limit:
                break
            found.append(job)
        return found

    def _scan(
        self,
        tenant_id: str,
        start: tuple[float, str] | None,
        floor_ms: float | None,
        job_type: str | None,
    ) -> Iterator[tuple[float, Job]]:
        key = keys.tenant_dead_letters(tenant_id)
        top: float | str = start[0] if start else "+inf"
        after_id = start[1] if start else None
        floor: float | str = floor_ms if floor_ms is not None else "-inf"
        while True:
            rows: list[tuple[str, float]] = self._redis.zrevrangebyscore(
                key, top, floor, start=0, num=_BATCH, withscores=True
            )
            # Members with the score we start at, that sort at or above the cursor, were seen.
            rows = [(m, s) for m, s in rows if not (start and s == top and after_id is not None and m >= after_id)]
            if not rows:
                return
            with self._redis.pipeline(transaction=False) as pipe:
                for member, _ in rows:
                    pipe.hgetall(keys.job(member))
                records = pipe.execute()
            for (_member, score), raw in zip(rows, records, strict=True):
                if raw:
                    job = Job.from_redis(raw)
                    if job_type is None or job.job_type == job_type:
                        yield score, job
            last_member, last_score = rows[-1]
            top, after_id, start = last_score, last_member, (last_score, last_member)


def _parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    text, _, job_id = cursor.partition(":")
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):  # "NaN" and "inf" parse as floats; Redis refuses them
        raise InvalidParameter("cursor", "cursor is not one this API returned")
    return score, job_id
