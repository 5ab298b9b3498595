"""Admission: idempotency, rate limit, backlog cap and the job record in one Lua script.

One round trip that cannot race decides a submission, in this order:

1. **idempotency** — a known key with the same fingerprint gives back the stored
   job (whatever its state) and consumes no rate limit; with another
   fingerprint it is an ``IdempotencyConflict``;
2. **jobType** — the caller says whether a live worker announced it (from its
   cache); an unknown one is refused here, after the replay check, so a replay
   is answered even while no worker is up;
3. **rate limit** — every window of the tenant's limits must have room
   (``pulse_core.guards.rate_limits``); otherwise ``RateLimited``, nothing consumed;
4. **backlog** — fewer than ``max_pending`` of the tenant's jobs not yet final;
   otherwise ``BacklogFull``, nothing consumed;
5. **record** — consume one slot in every window, write the job hash, index it
   under the tenant, count it pending, watch it (``keys.WATCH``: the sweep looks at
   it if nothing claims it in time), remember the idempotency key and, when the
   broker is this Redis, push the job's message onto its queue.

The script is safe to run twice with the same arguments (redis-py retries a call
that timed out): a job id already stored answers ``created`` and changes nothing.

With another broker, publishing happens after (``pulse_core.broker.celery_app``); if
it fails the caller discards the job (``JobStore.discard``), which removes the
record, the index entry, the pending count and the idempotency key, so nothing
is left half-done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from pulse_core import keys
from pulse_core.errors import (
    BacklogFull,
    IdempotencyConflict,
    PulseError,
    RateLimited,
    UnknownJobType,
)
from pulse_core.guards import rate_limits
from pulse_core.guards.idempotency import store_key
from pulse_core.guards.rate_limits import LimitStatus, whole_seconds
from pulse_core.jobs import Job
from pulse_core.store import listing
from pulse_core.tenants import Tenant

#: Retry-After (seconds) suggested when the backlog is full; jobs finish at their own pace.
BACKLOG_RETRY_AFTER_SECONDS = 1

# KEYS: 1 job hash, 2 tenant index, 3 pending hash, 4 idempotency key (or KEYS[1]
#       when there is none), 5 the Redis list of the job's lane and priority (or
#       KEYS[1] when the caller publishes), 6 the watch set, 7 the queue's lane set,
#       8.. the tenant's moving windows.
# ARGV: 1 tenant id, 2 job id, 3 created ms, 4 fingerprint ('' = no key),
#       5 key TTL seconds, 6 jobType live '1'/'0', 7 max_pending, 8 job key prefix,
#       9 the broker message to push ('' = the caller publishes), 10 number of
#       windows n, 11 in how many seconds (from Redis' clock) the sweep should look
#       at the job if nothing has claimed it,
#       12.. n (limit, expiry) pairs, then the record's field/value pairs.
_ADMIT = (
    rate_limits.LUA
    + listing.LUA_ADD
    + """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local n = tonumber(ARGV[10])
local stats = window_stats(now, 8, 12, n)

-- The same call again (redis-py retries a call that timed out): it was done already.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', stats} end

if ARGV[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local fp, job_id = string.match(seen, '^(%S+) (%S+)$')
    local record = redis.call('HGETALL', ARGV[8] .. job_id)
    if #record > 0 then
      if fp ~= ARGV[4] then return {'conflict', stats, job_id} end
      return {'replay', stats, record}
    end
    redis.call('DEL', KEYS[4])  -- the job's record is gone: the key is stale
  end
end
if ARGV[6] ~= '1' then return {'unknown-type', stats} end
if stats[5] == '1' then return {'rate-limited', stats} end
local pending = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if pending >= tonumber(ARGV[7]) then return {'backlog', stats, pending} end

window_acquire(now, 8, 12, n)
stats[2] = stats[2] - 1
redis.call('HSET', KEYS[1], unpack(ARGV, 12 + 2 * n))
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[11]), ARGV[2])
listing_add(KEYS[2], ARGV[3], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('SADD', KEYS[7], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[4] .. ' ' .. ARGV[2], 'EX', ARGV[5])
end
if ARGV[9] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[9]) end
return {'created', stats}
"""
)

# KEYS: the tenant's moving windows; ARGV: n, then n (limit, expiry) pairs. Reads only.
_STATUS = (
    rate_limits.LUA
    + """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
return window_stats(now, 1, 2, tonumber(ARGV[1]))
"""
)


@dataclass(frozen=True)
class Submission:
    """One job to admit, with what the guards need to know about it."""

    job: Job
    #: The tenant's idempotency key, if the request carried one.
    idempotency_key: str | None = None
    #: ``pulse_core.guards.idempotency.fingerprint`` of the body (needed with a key).
    fingerprint: str = ""
    #: Whether a live worker announced the jobType.
    job_type_live: bool = True
    #: The broker message to push with the record (``celery_setup.encode_message``);
    #: empty when the caller publishes through kombu itself.
    message: str = ""
    #: The Redis list ``message`` goes onto (``celery_setup.encode_message``).
    broker_list: str = ""
    #: For a delayed job: the ETA message's countdown (seconds).
    countdown: float | None = None
    #: In how many seconds the workers' sweep should look at the job if nothing claimed
    #: it: a queued job's message may be lost, a scheduled job's may be held by a dead worker.
    watch_in: float = 60.0
    #: Due beyond the ETA window: no message now, the sweep publishes it when due.
    deferred: bool = False


@dataclass(frozen=True)
class Admitted:
    """A submission let in: the new job, or the original one on an idempotent replay."""

    job: Job
    replayed: bool
    limit: LimitStatus
    #: Whether the job's message is already on its queue (pushed by the script).
    published: bool = False


class Admission:
    """The door: decides submissions with one script per job (pipelined for batches)."""

    def __init__(self, redis: Redis, *, idempotency_ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = idempotency_ttl_seconds
        self._admit = redis.register_script(_ADMIT)
        self._status = redis.register_script(_STATUS)

    def admit(self, tenant: Tenant, submission: Submission) -> Admitted:
        """Admit one job or raise the ``PulseError`` that refuses it."""
        keys_, args = self._call(tenant, submission)
        verdict = _decide(submission, self._admit(keys=keys_, args=args))
        if isinstance(verdict, PulseError):
            raise verdict
        return verdict

    def admit_many(self, tenant: Tenant, submissions: Sequence[Submission]) -> list[Admitted | PulseError]:
        """Admit each job in order, in one pipelined round trip; one verdict per job.

        Each script runs atomically on its own, so limits and idempotency hold per job
        (two items with the same key in one batch: the second replays the first).
        """
        with self._redis.pipeline(transaction=False) as pipe:
            for submission in submissions:
                keys_, args = self._call(tenant, submission)
                self._admit(keys=keys_, args=args, client=pipe)
            replies = pipe.execute()
        return [_decide(s, reply) for s, reply in zip(submissions, replies, strict=True)]

    def status(self, tenant: Tenant) -> LimitStatus:
        """Where ``tenant`` stands against its tightest limit, consuming nothing."""
        items = tenant.rate_limits
        stats = self._status(
            keys=rate_limits.window_keys(tenant.tenant_id, items),
            args=[len(items), *rate_limits.window_args(items)],
        )
        return _limit_status(stats)

    def _call(self, tenant: Tenant, submission: Submission) -> tuple[list[str], list[Any]]:
        job = submission.job
        items = tenant.rate_limits
        job_key = keys.job(job.job_id)
        idem_key = store_key(tenant.tenant_id, submission.idempotency_key) if submission.idempotency_key else job_key
        keys_ = [
            job_key,
            keys.tenant_jobs(tenant.tenant_id),
            keys.PENDING,
            idem_key,
            submission.broker_list or job_key,
            keys.WATCH,
            keys.lanes(job.queue),
            *rate_limits.window_keys(tenant.tenant_id, items),
        ]
        created_ms = int(datetime.fromisoformat(job.created_at).timestamp() * 1000)
        args: list[Any] = [
            tenant.tenant_id,
            job.job_id,
            created_ms,
            submission.fingerprint if submission.idempotency_key else "",
            self._ttl,
            "1" if submission.job_type_live else "0",
            tenant.max_pending,
            keys.job(""),
            submission.message,
            len(items),
            repr(max(0.0, submission.watch_in)),
            *rate_limits.window_args(items),
        ]
        for field, value in job.to_redis().items():
            args += [field, value]
        return keys_, args


def _decide(submission: Submission, reply: list[Any]) -> Admitted | PulseError:
    outcome, status = reply[0], _limit_status(reply[1])
    return _verdict(submission, outcome, reply, status)


def _limit_status(stats: list[Any]) -> LimitStatus:
    return LimitStatus(limit=int(stats[0]), remaining=int(stats[1]), reset=float(stats[2]))


def _verdict(submission: Submission, outcome: str, reply: list[Any], status: LimitStatus) -> Admitted | PulseError:
    stats = reply[1]
    job = submission.job
    if outcome == "created":
        return Admitted(job=job, replayed=False, limit=status, published=bool(submission.message))
    if outcome == "replay":
        flat = reply[2]
        stored = Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Admitted(job=stored, replayed=True, limit=status)
    if outcome == "conflict":
        return IdempotencyConflict(
            f"idempotency key {submission.idempotency_key!r} was used for job {reply[2]} "
            "with a different body; use a new key for a new job"
        )
    if outcome == "unknown-type":
        return UnknownJobType(job.job_type)
    if outcome == "rate-limited":
        retry = whole_seconds(float(stats[3]))
        return RateLimited(
            f"rate limit of {status.limit} reached; retry in {retry} s",
            retry_after=retry,
        )
    if outcome == "backlog":
        return BacklogFull(
            f"{reply[2]} jobs are not yet final, the most this tenant may have pending; wait for some to finish",
            retry_after=BACKLOG_RETRY_AFTER_SECONDS,
        )
    raise RuntimeError(f"admission script answered {outcome!r}")  # a bug, not bad input
