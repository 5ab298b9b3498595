"""The job store: job records in Redis hashes, the source of truth for status.

State changes that must not race (claiming an attempt, recording its outcome)
are single Lua scripts, so two workers can never both win the same transition.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from pulse_core import keys
from pulse_core.errors import InvalidCursor
from pulse_core.jobs import CLAIMABLE_STATES, Job, JobState, utc_now

#: How long a finished job's record is kept.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
for i = 2, #ARGV do
  if state == ARGV[i] then
    redis.call('HINCRBY', KEYS[1], 'attempts', 1)
    redis.call('HSET', KEYS[1], 'state', 'running', 'startedAt', ARGV[1])
    redis.call('HDEL', KEYS[1], 'finishedAt')
    return {'claimed', redis.call('HGETALL', KEYS[1])}
  end
end
return {state}
"""

# The backlog rule (``keys.PENDING``): every script that moves a record from a
# non-final to a final state also does HINCRBY PENDING <tenantId> -1, in the same
# script, exactly once per job; creation does +1 in the same step as the record.
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'tenantId'), -1)
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finishedAt', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Undo of a creation whose publish failed: KEYS 1 job, 2 tenant index, 3 pending,
# 4 idempotency key (or KEYS[1]); ARGV 1 tenant id, 2 job id.
_DISCARD = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'scheduled' then
  redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
local seen = redis.call('GET', KEYS[4])
if seen and string.sub(seen, -#ARGV[2] - 1) == ' ' .. ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return 1
"""


#: Index entries read per round trip while listing.
_LIST_CHUNK = 200


@dataclass(frozen=True)
class Page:
    """One page of a tenant's jobs, newest first."""

    jobs: list[Job]
    #: Opaque cursor for the next page; ``None`` when there is no more.
    next_cursor: str | None


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim a job's next attempt."""

    job: Job | None
    #: The state the record was in when the claim failed ("missing" when there is none).
    refused_state: str | None = None


class JobStore:
    """Reads and writes job records."""

    def __init__(self, redis: Redis, *, retention_seconds: int = DEFAULT_RETENTION_SECONDS):
        self._redis = redis
        self._retention = retention_seconds
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._discard = redis.register_script(_DISCARD)

    def create(self, job: Job) -> None:
        """Store a new job record, index it under its tenant and count it pending, atomically.

        The API creates records through ``pulse_core.admission`` (with its guards);
        this is the bare write, for tools and benchmarks.
        """
        created_ms = int(datetime.fromisoformat(job.created_at).timestamp() * 1000)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(job.job_id), mapping=job.to_redis())
            pipe.zadd(keys.tenant_jobs(job.tenant_id), {job.job_id: created_ms})
            pipe.hincrby(keys.PENDING, job.tenant_id, 1)
            pipe.execute()

    def discard(self, job: Job, *, idempotency_key: str | None = None) -> None:
        """Remove a record that was never published (undo of its creation).

        Also uncounts it from the backlog and releases ``idempotency_key`` (the
        Redis key) if it still points at this job, so a retry can succeed.
        """
        job_key = keys.job(job.job_id)
        self._discard(
            keys=[job_key, keys.tenant_jobs(job.tenant_id), keys.PENDING,
                  idempotency_key or job_key],
            args=[job.tenant_id, job.job_id],
        )  # fmt: skip

    def pending(self, tenant_id: str) -> int:
        """How many of ``tenant_id``'s jobs are not yet final."""
        return int(self._redis.hget(keys.PENDING, tenant_id) or 0)  # type: ignore[arg-type]

    def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when there is no such record."""
        raw: dict[str, str] = self._redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_redis(raw) if raw else None

    def get_for_tenant(self, tenant_id: str, job_id: str) -> Job | None:
        """The job if it exists and belongs to ``tenant_id``; ``None`` otherwise."""
        job = self.get(job_id)
        if job is None or job.tenant_id != tenant_id:
            return None
        return job

    def claim(self, job_id: str) -> Claim:
        """Atomically move a claimable job to ``running`` and count the attempt."""
        states = [state.value for state in CLAIMABLE_STATES]
        reply = self._claim(keys=[keys.job(job_id)], args=[utc_now(), *states])
        if reply[0] != "claimed":
            return Claim(job=None, refused_state=reply[0])
        flat = reply[1]
        return Claim(job=Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True))))

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result_json: str = "",
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the outcome of a running job; ``False`` if it was not running."""
        error_json = json.dumps(error, separators=(",", ":")) if error else ""
        done = self._finish(
            keys=[keys.job(job_id), keys.PENDING],
            args=[state.value, utc_now(), result_json, error_json, self._retention],
        )
        return bool(done)

    def list_for_tenant(
        self,
        tenant_id: str,
        *,
        limit: int,
        cursor: str | None = None,
        state: JobState | None = None,
        job_type: str | None = None,
    ) -> Page:
        """A page of ``tenant_id``'s jobs, newest first, optionally filtered.

        Walks the tenant's index (a sorted set by creation time) from ``cursor``;
        filtering reads records, so one call examines at most a bounded number of
        index entries and may return a short page with a cursor to go on from.
        """
        index = keys.tenant_jobs(tenant_id)
        after = _decode_cursor(cursor) if cursor else None
        top: str = "+inf" if after is None else str(after[0])
        budget = 10 * limit + _LIST_CHUNK
        offset, found, gone = 0, [], []
        last: tuple[int, str] | None = None
        while budget > 0:
            chunk: list[tuple[str, float]] = self._redis.zrevrangebyscore(
                index, top, "-inf", start=offset, num=_LIST_CHUNK, withscores=True
            )
            offset += len(chunk)
            # Equal scores are ordered by member, descending: skip up to the cursor's id.
            entries = [
                (int(score), job_id)
                for job_id, score in chunk
                if after is None or int(score) < after[0] or job_id < after[1]
            ]
            with self._redis.pipeline(transaction=False) as pipe:
                for _score, job_id in entries:
                    pipe.hgetall(keys.job(job_id))
                records: list[dict[str, str]] = pipe.execute()
            for entry, raw in zip(entries, records, strict=True):
                budget -= 1
                last = entry
                if not raw:
                    gone.append(entry[1])  # expired after retention
                    continue
                job = Job.from_redis(raw)
                if (state is None or job.state == state) and (
                    job_type is None or job.job_type == job_type
                ):
                    found.append(job)
                if len(found) == limit or budget <= 0:
                    break
            if len(found) == limit or len(chunk) < _LIST_CHUNK:
                break
        if gone:
            self._redis.zrem(index, *gone)
        more = last is not None and (len(found) == limit or budget <= 0)
        if more and last is not None and not self._has_older(index, last):
            more = False
        return Page(jobs=found, next_cursor=_encode_cursor(last) if more and last else None)

    def _has_older(self, index: str, last: tuple[int, str]) -> bool:
        """Whether the index holds an entry after ``last`` (newest-first order)."""
        rest: list[tuple[str, float]] = self._redis.zrevrangebyscore(
            index, str(last[0]), "-inf", start=0, num=_LIST_CHUNK, withscores=True
        )
        return any(int(s) < last[0] or m < last[1] for m, s in rest) or len(rest) == _LIST_CHUNK


def _encode_cursor(position: tuple[int, str]) -> str:
    text = f"{position[0]}:{position[1]}".encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = text.split(":", 1)
        if not job_id:
            raise ValueError(cursor)
        return int(score), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API returned") from None
