"""The dead-letter store: per tenant, a sorted set of dead job ids scored by time of death.

Modelled on RQ's ``registry.py``: the index lives in ``keys.tenant_dead_letters``,
the record itself stays in the job store (kept, not expired, while it is a dead
letter). Listing is newest first with the opaque cursor of ``pulse_core.store.listing``,
which stays valid while letters are added or removed.
"""

from __future__ import annotations

from itertools import islice

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript
from pulse_core.store import listing
from pulse_core.store.job_store import DEFAULT_RETENTION_SECONDS, JobStore
from pulse_core.store.listing import Page

#: Drops a dead letter and starts its record's retention, scoped to the tenant in one step.
_FORGET = LuaScript("pulse_core.store", "forget_dead_letter", bool)


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
        """Drop a dead letter; the job record stays readable until its retention ends.

        One script: the record's expiry is set only if the letter was ``tenant_id``'s.
        """
        return _FORGET.register(self._redis)(
            keys=[
                keys.tenant_dead_letters(tenant_id),
                keys.job(job_id),
                keys.tenant_counts(tenant_id),
            ],
            args=[job_id, self._retention],
        )

    def page(self, tenant_id: str, *, limit: int, cursor: str | None = None, job_type: str | None = None) -> Page[Job]:
        """Up to ``limit`` dead letters, newest first, after ``cursor`` (``pulse_core.store.listing``)."""
        return listing.page(
            self._redis,
            keys.tenant_dead_letters(tenant_id),
            limit=limit,
            cursor=cursor,
            load=self._store.get_listed,
            keep=lambda job: job_type is None or job.job_type == job_type,
            budget=10 * limit + listing.BATCH,
        )

    def select(
        self,
        tenant_id: str,
        *,
        job_type: str | None = None,
        since_ms: float | None = None,
        until_ms: float | None = None,
        limit: int,
    ) -> list[str]:
        """Ids of the dead letters matching a filter (time of death in epoch ms), newest first.

        Reads only each examined letter's ``jobType`` (one field, pipelined a batch at a
        time), never its record; the scan ends at ``limit`` matches or the end of the
        window, so it is bounded by the tenant's ``max_dead_letters``.
        """
        entries = listing.scan(self._redis, keys.tenant_dead_letters(tenant_id), ceiling=until_ms, floor=since_ms)
        found: list[str] = []
        while len(found) < limit:
            chunk = [member for _, member in islice(entries, listing.BATCH)]
            if not chunk:
                break
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hget(keys.job(job_id), "jobType")
                types: list[str | None] = pipe.execute()
            found += [
                job_id
                for job_id, found_type in zip(chunk, types, strict=True)
                if found_type is not None and (job_type is None or found_type == job_type)
            ]
        return found[:limit]
