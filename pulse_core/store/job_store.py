"""The job store: job records in Redis hashes, the source of truth for status.

Every state change that must not race is one Lua script, so two workers (or a
worker and the API) can never both win the same transition:

- ``claim``: start attempt ``n + 1``. A message names the attempt it starts (and
  the replay cycle); a copy for an attempt already started is refused, as is any
  message while the running attempt's lease is alive. A lapsed lease means the
  attempt's worker died: that attempt counts, and the next one may start.
- ``refresh_leases``: a live worker extends the leases of the attempts it runs.
- ``schedule_retry``: a failed attempt becomes ``retrying`` with a due time.
- ``finalize``: the ONE way into a final state (succeeded, dead, cancelled); the
  transition itself is the Lua function ``final_transition`` that ``cancel`` shares.
- ``recover``: the sweep's look at an overdue job (see ``pulse_core.store.recovery``).

Every job that is not final has a deadline in the ``keys.WATCH`` sorted set: a
queued job's time to be claimed, a running attempt's lease, a scheduled or
retrying job's due time. The recovery sweep looks at whatever is overdue.

The backlog rule (``keys.PENDING``, tenant -> jobs not yet final): creation does
+1 in the same step as the record; ``final_transition`` does -1, so every move
into a final state counts exactly once; a replay (dead -> queued) does +1 again,
and discarding an unpublished record does -1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import CLAIMABLE_STATES, DEFAULT_PRIORITY, FINAL_STATES, Job, JobState, utc_now
from pulse_core.store import listing
from pulse_core.store.listing import Page

#: How long a finished job's record is kept (a dead one stays until it leaves the dead letters).
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

# The one final transition. Preconditions are checked by the caller script.
# KEYS: job hash, watch zset, the tenant's dead-letter zset, the pending hash.
_FINAL_TRANSITION = (
    listing.LUA_ADD
    + """
local function final_transition(job_key, watch_key, dead_key, pending_key, job_id, state,
                                finished_at, result, err, retention, now_ms)
  redis.call('HINCRBY', pending_key, redis.call('HGET', job_key, 'tenantId'), -1)
  redis.call('HSET', job_key, 'state', state, 'finishedAt', finished_at)
  redis.call('HDEL', job_key, 'leaseUntil', 'owner', 'dueAt', 'deadLetter')
  if result ~= '' then redis.call('HSET', job_key, 'result', result) end
  if err ~= '' then
    redis.call('HSET', job_key, 'error', err)
  elseif state == 'succeeded' then
    redis.call('HDEL', job_key, 'error')
  end
  redis.call('ZREM', watch_key, job_id)
  if state == 'dead' then
    listing_add(dead_key, now_ms, job_id)
    redis.call('PERSIST', job_key)
  else
    redis.call('EXPIRE', job_key, retention)
  end
end
"""
)


def _lua_set(states: Iterable[JobState]) -> str:
    return "{" + ", ".join(f"{state.value}=true" for state in sorted(states)) + "}"


_FINAL_STATES_LUA = _lua_set(FINAL_STATES)
#: Waiting for an attempt: claimable by a message, cancellable at once.
_WAITING_STATES_LUA = _lua_set(CLAIMABLE_STATES)

# KEYS: job, watch. ARGV: now, lease_until, owner, msg_cycle, msg_attempt, started_at,
# job_id, fallback_max_retries, lost_error_json. -1 for an unknown cycle/attempt.
_CLAIM = f"""
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'leaseUntil', 'dueAt',
                     'maxRetries', 'deadLetter', 'cancelRequested')
local state = f[1]
if not state then return {{'missing'}} end
if ({_FINAL_STATES_LUA})[state] then return {{state}} end
local now = tonumber(ARGV[1])
local n = tonumber(f[2] or '0')
local c, k = tonumber(ARGV[4]), tonumber(ARGV[5])
if c >= 0 and c ~= tonumber(f[3] or '0') then return {{'stale'}} end
if k >= 0 and k < n then return {{'stale'}} end
local crashed = 0
if state == 'running' then
  if tonumber(f[4] or '0') > now then return {{'busy'}} end
  -- Its worker died after someone asked it to stop: it ends cancelled, never runs again.
  if f[8] == '1' then return {{'cancel', redis.call('HGETALL', KEYS[1])}} end
  if f[7] == '1' then return {{'exhausted', redis.call('HGETALL', KEYS[1])}} end
  redis.call('HSET', KEYS[1], 'error', ARGV[9])
  if n >= tonumber(f[6] or ARGV[8]) + 1 then
    return {{'exhausted', redis.call('HGETALL', KEYS[1])}}
  end
  crashed = 1
else
  if k >= 0 and k ~= n + 1 then return {{'stale'}} end
  if tonumber(f[5] or '0') > now then return {{'early', f[5]}} end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempts', n + 1, 'startedAt', ARGV[6],
           'leaseUntil', ARGV[2], 'owner', ARGV[3])
redis.call('HDEL', KEYS[1], 'finishedAt', 'dueAt', 'recoveries', 'laneWaits')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
return {{'claimed', redis.call('HGETALL', KEYS[1]), crashed}}
"""

# KEYS: watch, job... ARGV: lease_until, owner, job_id...
_REFRESH = """
local n = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'owner')
  if f[1] == 'running' and f[2] == ARGV[2] then
    redis.call('HSET', KEYS[i], 'leaseUntil', ARGV[1])
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: job, watch. ARGV: attempt, cycle, due_at, watch_at, error_json, job_id.
_SCHEDULE_RETRY = """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle')
if f[1] ~= 'running' or tonumber(f[2]) ~= tonumber(ARGV[1])
   or tonumber(f[3] or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'retrying', 'dueAt', ARGV[3], 'error', ARGV[5])
redis.call('HDEL', KEYS[1], 'leaseUntil', 'owner')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
return 1
"""

# KEYS: job. ARGV: attempt, cycle, error_json.
_MARK_DEAD_LETTER = """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle')
if f[1] ~= 'running' or tonumber(f[2]) ~= tonumber(ARGV[1])
   or tonumber(f[3] or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[3], 'deadLetter', '1')
return 1
"""

# KEYS: job, watch, dead, pending. ARGV: state, finished_at, result, error, retention,
# job_id, now_ms, from ('attempt' | 'orphan' | 'waiting' | 'replayed'), attempt, cycle.
_FINALIZE = (
    _FINAL_TRANSITION
    + f"""
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle', 'leaseUntil')
local state, from = f[1], ARGV[8]
if not state then return 0 end
if from == 'waiting' then
  if not ({_WAITING_STATES_LUA})[state] then return 0 end
elseif from == 'replayed' then
  if state ~= 'queued' or tonumber(f[2] or '0') ~= 0
     or tonumber(f[3] or '0') ~= tonumber(ARGV[10]) then return 0 end
else
  if state ~= 'running' or tonumber(f[2] or '0') ~= tonumber(ARGV[9])
     or tonumber(f[3] or '0') ~= tonumber(ARGV[10]) then return 0 end
  if from == 'orphan' and tonumber(f[4] or '0') * 1000 > tonumber(ARGV[7]) then return 0 end
end
final_transition(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[1], ARGV[2], ARGV[3],
                 ARGV[4], ARGV[5], ARGV[7])
return 1
"""
)

# KEYS: job, watch, dead, pending. ARGV: tenant_id, finished_at, retention, job_id, now_ms.
_CANCEL = (
    _FINAL_TRANSITION
    + f"""
local f = redis.call('HMGET', KEYS[1], 'state', 'tenantId')
local state = f[1]
if not state or f[2] ~= ARGV[1] then return 'missing' end
if ({_WAITING_STATES_LUA})[state] then
  final_transition(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], 'cancelled', ARGV[2], '', '',
                   ARGV[3], ARGV[5])
  return 'cancelled'
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancelRequested', '1')
  return 'running'
end
return 'finished:' .. state
"""
)

# KEYS: job, dead, pending, watch. ARGV: job_id, seconds until the sweep checks it was claimed.
# Watched like any queued job: a process that dies before publishing loses nothing.
_REPLAY = """
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return {} end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return {} end
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'tenantId'), 1)
redis.call('HINCRBY', KEYS[1], 'cycle', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0)
redis.call('HDEL', KEYS[1], 'result', 'startedAt', 'finishedAt', 'dueAt', 'cancelRequested',
           'leaseUntil', 'owner', 'recoveries', 'laneWaits')
redis.call('ZADD', KEYS[4], tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: watch. ARGV: job id, seconds. Push a waiting job's check later (never earlier).
_POSTPONE_CHECK = """
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', 'GT', tonumber(t[1]) + tonumber(ARGV[2]), ARGV[1])
"""

# Undo of a creation whose publish failed: KEYS 1 job, 2 tenant index, 3 pending,
# 4 idempotency key (or KEYS[1]), 5 watch; ARGV 1 tenant id, 2 job id.
_DISCARD = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'scheduled' then
  redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
local seen = redis.call('GET', KEYS[4])
if seen and string.sub(seen, -#ARGV[2] - 1) == ' ' .. ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return 1
"""

# KEYS: 1 job, 2 watch, 3.. the Redis lists the job's messages wait on (none when the
#       broker is not this Redis).
# ARGV: 1 job id, 2 recheck base for a lapsed lease or a missed due time (seconds),
#       3 recheck base for a queued job, 4 longest recheck, 5 how many checks a queued
#       job waits while its lane holds messages before it is republished anyway.
# Reply: {'gone'} | {'alive'} | {'waiting'} | {'republish', record}.
# Times are Redis' own (TIME), so a host whose clock runs ahead cannot call live jobs lost.
_RECOVER = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local f = redis.call('HMGET', KEYS[1], 'state', 'leaseUntil', 'dueAt', 'recoveries', 'laneWaits')
local state = f[1]
if not state or ({_FINAL_STATES_LUA})[state] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {{'gone'}}
end
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if deadline and tonumber(deadline) > now then return {{'alive'}} end
if state == 'running' then
  local lease = tonumber(f[2] or '0')
  if lease > now then
    redis.call('ZADD', KEYS[2], lease, ARGV[1])
    return {{'alive'}}
  end
end
local n = tonumber(f[4] or '0')
local base = tonumber(state == 'queued' and ARGV[3] or ARGV[2])
-- A copy may still wait behind others in its lane (a queued job's first message, or an
-- earlier republished copy): give it more time, a bounded number of checks.
if state == 'queued' or n > 0 then
  local waiting = 0
  for i = 3, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
  local waits = tonumber(f[5] or '0')
  if waiting > 0 and waits < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'laneWaits', waits + 1)
    redis.call('ZADD', KEYS[2], now + base, ARGV[1])
    return {{'waiting'}}
  end
end
redis.call('HSET', KEYS[1], 'recoveries', n + 1, 'laneWaits', 0)
redis.call('ZADD', KEYS[2], now + math.min(base * 2 ^ n, tonumber(ARGV[4])), ARGV[1])
return {{'republish', redis.call('HGETALL', KEYS[1])}}
"""

# KEYS: watch. ARGV: most ids. Overdue ids on Redis' clock.
_OVERDUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""


@dataclass(frozen=True)
class RecheckPolicy:
    """How long the sweep waits before looking at a republished job again (seconds).

    After the ``n``-th republish: ``base * 2 ** n`` capped at ``longest``, where ``base``
    is ``lapsed`` for a lost attempt or a missed due time and ``queued`` for a queued job.
    """

    lapsed: float
    queued: float
    longest: float = 3600.0
    #: Checks a queued job waits while its lane still holds messages, before it is republished anyway.
    lane_waits: int = 8


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim a job's next attempt."""

    job: Job | None
    #: Why nothing was claimed: the record's final state, "missing", "stale" (a copy
    #: for an attempt already started or a past cycle), "busy" (a live attempt runs),
    #: "early" (not due yet) or "exhausted" (the crashed attempt was the last one, or
    #: it was being dead-lettered: finalize the job as dead with the recorded error) or
    #: "cancel" (its worker died after a cancel was asked: finalize it as cancelled).
    refused: str | None = None
    #: The previous attempt's worker died; this claim counted it and starts the next.
    after_crash: bool = False
    #: For "early": when the job is due (epoch seconds).
    due_at: float | None = None


def _record(flat: list[str]) -> Job:
    return Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(value, separators=(",", ":")) if value else ""


class JobStore:
    """Reads and writes job records."""

    def __init__(self, redis: Redis, *, retention_seconds: int = DEFAULT_RETENTION_SECONDS):
        self._redis = redis
        self._retention = retention_seconds
        self._claim = redis.register_script(_CLAIM)
        self._refresh = redis.register_script(_REFRESH)
        self._schedule_retry = redis.register_script(_SCHEDULE_RETRY)
        self._mark_dead_letter = redis.register_script(_MARK_DEAD_LETTER)
        self._finalize = redis.register_script(_FINALIZE)
        self._cancel = redis.register_script(_CANCEL)
        self._replay = redis.register_script(_REPLAY)
        self._postpone_check = redis.register_script(_POSTPONE_CHECK)
        self._recover = redis.register_script(_RECOVER)
        self._overdue = redis.register_script(_OVERDUE)
        self._discard = redis.register_script(_DISCARD)
        self._index_add = redis.register_script(listing.ADD)

    def create(self, job: Job, *, watch_at: float | None = None) -> None:
        """Store a new job record, index it under its tenant, count it pending and register
        its lane (``pulse_core.broker.routing``), atomically.

        The API creates records through ``pulse_core.guards.admission`` (with its guards);
        this is the bare write, for tools and benchmarks. ``watch_at``: for a
        scheduled job, when the sweep should publish it if no message has started it.
        """
        created_ms = int(datetime.fromisoformat(job.created_at).timestamp() * 1000)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(job.job_id), mapping=job.to_redis())
            self._index_add(keys=[keys.tenant_jobs(job.tenant_id)], args=[created_ms, job.job_id], client=pipe)
            pipe.hincrby(keys.PENDING, job.tenant_id, 1)
            pipe.sadd(keys.lanes(job.queue), job.tenant_id)
            if watch_at is not None:
                pipe.zadd(keys.WATCH, {job.job_id: watch_at})
            pipe.execute()

    def discard(self, job: Job, *, idempotency_key: str | None = None) -> None:
        """Remove a record that was never published (undo of its creation).

        Also uncounts it from the backlog, unwatches it and releases
        ``idempotency_key`` (the Redis key) if it still points at this job, so a
        retry can succeed.
        """
        job_key = keys.job(job.job_id)
        self._discard(
            keys=[job_key, keys.tenant_jobs(job.tenant_id), keys.PENDING, idempotency_key or job_key, keys.WATCH],
            args=[job.tenant_id, job.job_id],
        )

    def pending(self, tenant_id: str) -> int:
        """How many of ``tenant_id``'s jobs are not yet final."""
        return int(self._redis.hget(keys.PENDING, tenant_id) or 0)  # type: ignore[arg-type]

    def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when there is no such record."""
        raw: dict[str, str] = self._redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_redis(raw) if raw else None

    def type_and_tenant(self, job_id: str) -> tuple[str, str] | None:
        """(jobType, tenant id) of the job, or ``None`` when there is no such record."""
        found: list[str | None] = self._redis.hmget(keys.job(job_id), ["jobType", "tenantId"])  # type: ignore[assignment]
        job_type, tenant_id = found
        if not job_type or not tenant_id:
            return None
        return str(job_type), str(tenant_id)

    def get_for_tenant(self, tenant_id: str, job_id: str) -> Job | None:
        """The job if it exists and belongs to ``tenant_id``; ``None`` otherwise."""
        job = self.get(job_id)
        if job is None or job.tenant_id != tenant_id:
            return None
        return job

    def claim(
        self,
        job_id: str,
        *,
        owner: str,
        lease_seconds: float,
        attempt: int | None = None,
        cycle: int | None = None,
        fallback_max_retries: int,
        lost_error: Mapping[str, Any],
    ) -> Claim:
        """Atomically start the job's next attempt under a lease held by ``owner``.

        ``attempt``/``cycle`` are what the message says it starts (``None``: the
        next one). ``fallback_max_retries`` bounds crashed attempts of a record that
        carries no ``maxRetries``; ``lost_error`` is recorded for a crashed attempt.
        """
        now = time.time()
        reply = self._claim(
            keys=[keys.job(job_id), keys.WATCH],
            args=[
                repr(now),
                repr(now + lease_seconds),
                owner,
                -1 if cycle is None else cycle,
                -1 if attempt is None else attempt,
                utc_now(),
                job_id,
                fallback_max_retries,
                _json(lost_error),
            ],
        )
        status = reply[0]
        if status == "claimed":
            return Claim(job=_record(reply[1]), after_crash=bool(reply[2]))
        if status in ("exhausted", "cancel"):
            return Claim(job=_record(reply[1]), refused=status)
        if status == "early":
            return Claim(job=None, refused=status, due_at=float(reply[1]))
        return Claim(job=None, refused=status)

    def refresh_leases(self, owner: str, job_ids: Iterable[str], lease_seconds: float) -> int:
        """Extend the leases of ``owner``'s running attempts; return how many were extended."""
        ids = list(job_ids)
        if not ids:
            return 0
        until = repr(time.time() + lease_seconds)
        done = self._refresh(keys=[keys.WATCH, *(keys.job(job_id) for job_id in ids)], args=[until, owner, *ids])
        return int(done)

    def schedule_retry(self, job: Job, *, due_at: float, watch_at: float, error: Mapping[str, Any]) -> bool:
        """Move the running attempt ``job.attempts`` to ``retrying``, due at ``due_at``."""
        done = self._schedule_retry(
            keys=[keys.job(job.job_id), keys.WATCH],
            args=[job.attempts, job.cycle, repr(due_at), repr(watch_at), _json(error), job.job_id],
        )
        return bool(done)

    def mark_dead_letter(self, job: Job, error: Mapping[str, Any]) -> bool:
        """Record the last error of the running attempt that is about to be dead-lettered.

        The record stays ``running`` until the dead-letter task finalizes it; if that
        task never runs, the recovery sweep finds the lapsed lease and the claim ends
        the job ``dead`` with this error instead of running it again.
        """
        done = self._mark_dead_letter(keys=[keys.job(job.job_id)], args=[job.attempts, job.cycle, _json(error)])
        return bool(done)

    def finalize(
        self,
        job: Job,
        state: JobState,
        *,
        result_json: str = "",
        error: Mapping[str, Any] | None = None,
        from_: str = "attempt",
    ) -> bool:
        """Move ``job`` to a final state; ``False`` if it is no longer where ``from_`` says.

        ``from_``: "attempt" (its running attempt ``job.attempts`` of cycle
        ``job.cycle``), "orphan" (the same, whose lease lapsed), "waiting" (queued,
        scheduled or retrying) or "replayed" (queued by a replay, not yet claimed).
        A dead job joins its tenant's dead letters and is kept until it leaves them.
        """
        done = self._finalize(
            keys=[keys.job(job.job_id), keys.WATCH, keys.tenant_dead_letters(job.tenant_id), keys.PENDING],
            args=[
                state.value,
                utc_now(),
                result_json,
                _json(error),
                self._retention,
                job.job_id,
                int(time.time() * 1000),
                from_,
                job.attempts,
                job.cycle,
            ],
        )
        return bool(done)

    def cancel(self, tenant_id: str, job_id: str) -> str:
        """Cancel a waiting job, or flag a running one; return the resulting state.

        "cancelled" when it will never run, "running" when the handler was asked to
        stop (``ctx.cancel_requested()``), "finished:<state>" when it had already
        finished, "missing" when ``tenant_id`` has no such job.
        """
        reply = self._cancel(
            keys=[keys.job(job_id), keys.WATCH, keys.tenant_dead_letters(tenant_id), keys.PENDING],
            args=[tenant_id, utc_now(), self._retention, job_id, int(time.time() * 1000)],
        )
        return str(reply)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked the running job to stop."""
        return self._redis.hget(keys.job(job_id), "cancelRequested") == "1"

    def replay(self, tenant_id: str, job_id: str, *, check_in: float) -> Job | None:
        """Take a dead job out of the tenant's dead letters and queue it for a new cycle.

        The job keeps its id; ``attempts`` starts again from 0 and ``replays``
        (``cycle``) grows by one. It is watched like a new job: if nothing claims it
        within ``check_in`` seconds the sweep republishes it. ``None`` when the tenant
        has no such dead letter.
        """
        flat = self._replay(
            keys=[keys.job(job_id), keys.tenant_dead_letters(tenant_id), keys.PENDING, keys.WATCH],
            args=[job_id, check_in],
        )
        return _record(flat) if flat else None

    def postpone_check(self, job_id: str, seconds: float) -> None:
        """A waiting job's message is alive (an execution limit deferred it): check it later."""
        self._postpone_check(keys=[keys.WATCH], args=[job_id, seconds])

    def recover_many(
        self,
        job_ids: list[str],
        *,
        waiting_lists: Callable[[str, str, int], list[str]],
        recheck: RecheckPolicy,
    ) -> list[Job]:
        """The sweep's step for a batch of overdue jobs: those whose message to republish.

        Overdue is a running attempt whose lease lapsed, a scheduled or retrying job past
        its due time, or a queued job nothing claimed in time. Each is republished and
        re-armed with back-off (``recheck``), so another copy goes out only if that one
        is lost too; a queued job whose lane still holds messages (``waiting_lists(queue,
        tenant, priority)``: empty when they cannot be read) gets a few more checks first.
        Two round trips for the whole batch.
        """
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), ["queue", "tenantId", "priority"])
            places: list[list[str | None]] = pipe.execute()
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id, (queue, tenant, priority) in zip(job_ids, places, strict=True):
                lists = waiting_lists(queue, tenant, int(priority or DEFAULT_PRIORITY)) if queue and tenant else []
                self._recover(
                    keys=[keys.job(job_id), keys.WATCH, *lists],
                    args=[job_id, recheck.lapsed, recheck.queued, recheck.longest, recheck.lane_waits],
                    client=pipe,
                )
            replies = pipe.execute()
        return [_record(reply[1]) for reply in replies if reply[0] == "republish"]

    def overdue(self, limit: int) -> list[str]:
        """Up to ``limit`` watched job ids whose deadline has passed on Redis' clock."""
        found: list[str] = self._overdue(keys=[keys.WATCH], args=[limit])
        return found

    def list_for_tenant(
        self,
        tenant_id: str,
        *,
        limit: int,
        cursor: str | None = None,
        state: JobState | None = None,
        job_type: str | None = None,
    ) -> Page[Job]:
        """A page of ``tenant_id``'s jobs, newest first, optionally filtered (``pulse_core.store.listing``).

        Filtering reads records, so one call examines at most a bounded number of
        index entries and may return a short page with a cursor to go on from.
        Entries whose record expired after its retention are dropped from the index.
        """
        index = keys.tenant_jobs(tenant_id)
        gone: list[str] = []
        found = listing.page(
            self._redis,
            index,
            limit=limit,
            cursor=cursor,
            load=self.get_many,
            keep=lambda job: (state is None or job.state == state) and (job_type is None or job.job_type == job_type),
            budget=10 * limit + listing.BATCH,
            gone=gone,
        )
        if gone:
            self._redis.zrem(index, *gone)
        return found

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """The jobs, in order, in one round trip (``None`` for a missing record)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            records: list[dict[str, str]] = pipe.execute()
        return [Job.from_redis(raw) if raw else None for raw in records]
