"""The job store: job records in Redis hashes, the source of truth for status.

State changes that must not race (claiming an attempt, recording its outcome)
are single Lua scripts, so two workers can never both win the same transition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from pulse_core import keys
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

_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finishedAt', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


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

    def create(self, job: Job) -> None:
        """Store a new job record and index it under its tenant, atomically."""
        created_ms = int(datetime.fromisoformat(job.created_at).timestamp() * 1000)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(job.job_id), mapping=job.to_redis())
            pipe.zadd(keys.tenant_jobs(job.tenant_id), {job.job_id: created_ms})
            pipe.execute()

    def discard(self, job: Job) -> None:
        """Remove a record that was never published (undo of ``create``)."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.job(job.job_id))
            pipe.zrem(keys.tenant_jobs(job.tenant_id), job.job_id)
            pipe.execute()

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
            keys=[keys.job(job_id)],
            args=[state.value, utc_now(), result_json, error_json, self._retention],
        )
        return bool(done)
