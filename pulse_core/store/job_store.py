"""The job store: job records in Redis hashes, the source of truth for status.

Every state change that must not race is one Lua script, so two workers (or a
worker and the API) can never both win the same transition:

- ``claim``: start attempt ``n + 1``. A message names the attempt it starts (and
  the replay cycle); a copy for an attempt already started is refused, as is any
  message while the running attempt's lease is alive. A lapsed lease means the
  attempt's worker died: that attempt counts, and the next one may start.
- ``refresh_leases``: a live worker extends the leases of the attempts it runs; the
  lease owner names the attempt (the worker's unique name and the message's task id),
  so a worker renews only what it claimed itself.
- ``schedule_retry``: a failed attempt becomes ``retrying`` with a due time.
- ``finalize``: the ONE way into a final state (succeeded, dead, cancelled); the
  transition itself is the Lua function ``final_transition`` that ``cancel`` shares.
- ``recover``: the sweep's look at one overdue job (see ``pulse_core.store.recovery``).

Each script is a file in ``pulse_core/store/lua/`` (its header names its KEYS and
ARGV); its reply is mapped once, where the script is declared below.

Every job that is not final has a deadline in the ``keys.WATCH`` sorted set: a
queued job's time to be claimed, a running attempt's lease, a scheduled or
retrying job's due time. The recovery sweep looks at whatever is overdue.

The backlog rule (the field ``pending`` of ``keys.tenant_counts``: the tenant's jobs not yet
final): creation does
+1 in the same step as the record; ``final_transition`` does -1, so every move
into a final state counts exactly once; a replay (dead -> queued) does +1 again.

The storage budget rule (``max_stored_bytes``; ``lua/includes/stored_bytes.lua``): a
record's bytes (its field ``storedBytes``) count in the tenant's ``held`` bytes
(``keys.tenant_counts``) while it does not expire (not final, or a dead letter) and in its
retained buckets (the same hash) once it does; admission adds them, ``final_transition``
adds the result and error and moves them, a dead letter leaving moves them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import DEFAULT_PRIORITY, DOCUMENT_FIELDS, FINAL_STATES, Job, JobState, utc_now
from pulse_core.lua_scripts import LuaScript
from pulse_core.redis_client import redis_clock_earliest, redis_now, server_time
from pulse_core.store import listing
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.listing import Page
from pulse_core.tenants import DEFAULT_DEAD_LETTER_DAYS, DEFAULT_MAX_DEAD_LETTERS

#: How long a finished job's record is kept (a dead one stays until it leaves the dead letters).
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


class ClaimRefusal(StrEnum):
    """Why a claim started nothing (besides the record's final state)."""

    #: No such record (expired or never stored).
    MISSING = "missing"
    #: A copy for an attempt already started, or of a past cycle.
    STALE = "stale"
    #: A live attempt runs.
    BUSY = "busy"
    #: Not due yet (see ``Claim.due_at``).
    EARLY = "early"
    #: The crashed attempt was the last one, or it was being dead-lettered: finalize
    #: the job as dead with the recorded error.
    EXHAUSTED = "exhausted"
    #: Its worker died after a cancel was asked: finalize the job as cancelled.
    CANCEL = "cancel"


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim a job's next attempt."""

    job: Job | None
    #: Why nothing was claimed: a ``ClaimRefusal`` or the record's final ``JobState``.
    refused: ClaimRefusal | JobState | None = None
    #: The previous attempt's worker died; this claim counted it and starts the next.
    after_crash: bool = False
    #: For "early": when the job is due (epoch seconds).
    due_at: float | None = None


class FailureOutcome(StrEnum):
    """What recording a failed attempt's outcome did (``JobStore.schedule_retry``,
    ``JobStore.mark_dead_letter``)."""

    #: Recorded: the job is ``retrying`` (due at the given time), or its error is recorded for
    #: the dead-letter task.
    RECORDED = "recorded"
    #: The attempt is no longer the running one: nothing changed.
    STALE = "stale"
    #: Its tenant asked it to stop: nothing changed; the caller ends the job ``cancelled``.
    CANCEL = "cancel"


_FAILURE_REPLIES = {1: FailureOutcome.RECORDED, 0: FailureOutcome.STALE, -1: FailureOutcome.CANCEL}


class CancelOutcome(StrEnum):
    """What cancelling did; a string, as the API reads it (``"finished:<state>"``)."""

    #: It was waiting; it is now cancelled and will never run.
    CANCELLED = "cancelled"
    #: It runs; its handler was asked to stop (``ctx.cancel_requested()``).
    RUNNING = "running"
    #: The tenant has no such job.
    MISSING = "missing"
    FINISHED_SUCCEEDED = "finished:succeeded"
    FINISHED_DEAD = "finished:dead"
    FINISHED_CANCELLED = "finished:cancelled"

    @property
    def finished_state(self) -> JobState | None:
        """The final state the job had already reached, for a ``FINISHED_*`` outcome."""
        prefix, _, state = self.value.partition(":")
        return JobState(state) if prefix == "finished" else None


def _record(flat: list[str]) -> Job:
    return Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(value, separators=(",", ":")) if value else ""


# The store's scripts (pulse_core/store/lua/*.lua), each with the one function reading its reply.


def _claim_reply(reply: list[Any]) -> Claim:
    status = reply[0]
    if status == "claimed":
        return Claim(job=_record(reply[1]), after_crash=bool(reply[2]))
    if status in _FINAL_VALUES:
        return Claim(job=None, refused=JobState(status))
    refusal = ClaimRefusal(status)
    if refusal in (ClaimRefusal.EXHAUSTED, ClaimRefusal.CANCEL):
        return Claim(job=_record(reply[1]), refused=refusal)
    if refusal is ClaimRefusal.EARLY:
        return Claim(job=None, refused=refusal, due_at=float(reply[1]))
    return Claim(job=None, refused=refusal)


def _recover_reply(reply: list[Any]) -> Job | None:
    """The job to republish ('republish'), or ``None`` ('alive' or 'waiting': re-armed; 'gone': unwatched)."""
    if reply[0] == "republish":
        return _record(reply[1])
    if reply[0] not in ("alive", "waiting", "gone"):
        raise RuntimeError(f"recover script answered {reply[0]!r}")  # a bug, not bad input
    return None


_FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)
_STORE = "pulse_core.store"
_CLAIM = LuaScript(_STORE, "claim", _claim_reply)
_REFRESH = LuaScript(_STORE, "refresh_leases", int)
_SCHEDULE_RETRY = LuaScript(_STORE, "schedule_retry", lambda reply: _FAILURE_REPLIES[int(reply)])
_MARK_DEAD_LETTER = LuaScript(_STORE, "mark_dead_letter", lambda reply: _FAILURE_REPLIES[int(reply)])
_FINALIZE = LuaScript(_STORE, "finalize", bool)
_CANCEL = LuaScript(_STORE, "cancel", CancelOutcome)
_RECOVER = LuaScript(_STORE, "recover", _recover_reply)
_OVERDUE = LuaScript(_STORE, "overdue", list)
_POSTPONE_CHECK = LuaScript(_STORE, "postpone_check", int)


@dataclass(frozen=True)
class DeadLetterBounds:
    """How many dead letters a tenant keeps, and for how many days (the tenants file's
    ``max_dead_letters`` and ``dead_letter_days``); past either, the oldest leave."""

    most: int = DEFAULT_MAX_DEAD_LETTERS
    days: int = DEFAULT_DEAD_LETTER_DAYS


@dataclass(frozen=True)
class RecheckPolicy:
    """How long the sweep waits before looking at a republished job again (seconds).

    After the ``n``-th republish: ``base * 2 ** n`` capped at ``longest``, where ``base``
    is ``lapsed`` for a lost attempt or a missed due time and ``queued`` for a queued job.
    """

    lapsed: float
    queued: float
    longest: float = 3600.0
    #: Checks a queued job waits while its queue still holds messages, before it is republished anyway.
    lane_waits: int = 8


class JobStore:
    """Reads and writes job records."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        dispatcher: Dispatcher | None = None,
    ):
        self._redis = redis
        self._retention = retention_seconds
        #: When set, the scripts that end an attempt dispatch its queue's next job
        #: (``pulse_core.store.dispatch``).
        self.dispatcher = dispatcher
        self._claim = _CLAIM.register(redis)
        self._refresh = _REFRESH.register(redis)
        self._schedule_retry = _SCHEDULE_RETRY.register(redis)
        self._mark_dead_letter = _MARK_DEAD_LETTER.register(redis)
        self._finalize = _FINALIZE.register(redis)
        self._cancel = _CANCEL.register(redis)
        self._recover = _RECOVER.register(redis)
        self._overdue = _OVERDUE.register(redis)
        self._postpone_check = _POSTPONE_CHECK.register(redis)
        self._index_add = listing.ADD.register(redis)

    def now(self) -> float:
        """Now on Redis' clock (``pulse_core.redis_client.redis_now``): what a due time written
        into a record (a delayed job's, a retry's) is compared with."""
        return redis_now(self._redis)

    def lease_now(self) -> float | None:
        """Now as a lease is compared with it: never ahead of Redis' clock
        (``pulse_core.redis_client.redis_clock_earliest``); ``None`` when only Redis' own
        ``TIME`` can say (this process' last measure of it was slow, or failed)."""
        return redis_clock_earliest(self._redis)

    def create(self, job: Job, *, watch_at: float | None = None) -> None:
        """Store a new job record, index it under its tenant and count it pending, atomically.

        The API creates records through ``pulse_core.guards.admission`` (with its guards);
        this is the bare write, for tools and benchmarks. ``watch_at``: for a
        scheduled job, when the sweep should publish it if no message has started it.
        """
        created_ms = int(datetime.fromisoformat(job.created_at).timestamp() * 1000)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(job.job_id), mapping=job.to_redis())
            counts = keys.tenant_counts(job.tenant_id)
            self._index_add.queue(pipe, keys=[keys.tenant_jobs(job.tenant_id), counts], args=[created_ms, job.job_id])
            pipe.hincrby(counts, "pending", 1)
            if watch_at is not None:
                pipe.zadd(keys.WATCH, {job.job_id: watch_at})
            pipe.execute()

    def pending(self, tenant_id: str) -> int:
        """How many of ``tenant_id``'s jobs are not yet final."""
        return int(self._redis.hget(keys.tenant_counts(tenant_id), "pending") or 0)  # type: ignore[arg-type]

    def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when there is no such record."""
        raw: dict[str, str] = self._redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return Job.from_redis(raw) if raw else None

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that have a record, in one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.job(job_id))
            found: list[int] = pipe.execute()
        return {job_id for job_id, there in zip(job_ids, found, strict=True) if there}

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
        # never ahead of Redis' clock, so a live lease never looks lapsed; '': the script reads TIME
        now = self.lease_now()
        return self._claim(
            keys=[keys.job(job_id), keys.WATCH],
            args=[
                "" if now is None else repr(now),
                lease_seconds,
                owner,
                -1 if cycle is None else cycle,
                -1 if attempt is None else attempt,
                utc_now(),
                job_id,
                fallback_max_retries,
                _json(lost_error),
                uuid.uuid4().hex,  # this call's token: run again by a retry, it is still this claim
            ],
        )

    def refresh_leases(self, attempts: Iterable[tuple[str, str]], lease_seconds: float) -> int:
        """Extend the leases of running attempts, each given as ``(job_id, owner)``: a lease
        is extended only while its attempt is still the one ``owner`` claimed. Returns how
        many were extended (one round trip for all)."""
        pairs = list(attempts)
        if not pairs:
            return 0
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id, owner in pairs:
                self._refresh.queue(pipe, keys=[keys.WATCH, keys.job(job_id)], args=[lease_seconds, owner, job_id])
            done = pipe.execute()
        return sum(self._refresh.read(raw) for raw in done)

    def schedule_retry(self, job: Job, *, due_at: float, watch_at: float, error: Mapping[str, Any]) -> FailureOutcome:
        """Move the running attempt ``job.attempts`` to ``retrying``, due at ``due_at``; not a
        job whose cancel was asked (``FailureOutcome.CANCEL``: the caller finalizes it cancelled)."""
        more_keys, more_args = self._dispatch_spec(job)
        return self._schedule_retry(
            keys=[keys.job(job.job_id), keys.WATCH, *more_keys],
            args=[job.attempts, job.cycle, repr(due_at), repr(watch_at), _json(error), job.job_id, *more_args],
        )

    def _dispatch_spec(self, job: Job) -> tuple[list[str], list[Any]]:
        """What a script that ends an attempt of ``job`` needs to dispatch its queue (nothing
        without a dispatcher)."""
        if self.dispatcher is None or not self.dispatcher.inline or not job.queue:
            return [], []
        return self.dispatcher.spec(job.queue)

    def mark_dead_letter(self, job: Job, error: Mapping[str, Any]) -> FailureOutcome:
        """Record the last error of the running attempt that is about to be dead-lettered.

        The record stays ``running`` until the dead-letter task finalizes it; if that
        task never runs, the recovery sweep finds the lapsed lease and the claim ends
        the job ``dead`` with this error instead of running it again. Not for a job whose
        cancel was asked (``FailureOutcome.CANCEL``: the caller finalizes it cancelled).
        """
        return self._mark_dead_letter(keys=[keys.job(job.job_id)], args=[job.attempts, job.cycle, _json(error)])

    def finalize(
        self,
        job: Job,
        state: JobState,
        *,
        result_json: str = "",
        error: Mapping[str, Any] | None = None,
        from_: str = "attempt",
        dead_letters: DeadLetterBounds | None = None,
        result_budget: int = 0,
    ) -> bool:
        """Move ``job`` to a final state; ``False`` if it is no longer where ``from_`` says.

        ``from_``: "attempt" (its running attempt ``job.attempts`` of cycle
        ``job.cycle``), "orphan" (the same, whose lease lapsed), "waiting" (queued,
        scheduled or retrying) or "replayed" (queued by a replay, not yet claimed).
        A dead job joins its tenant's dead letters and is kept until it leaves them:
        ``dead_letters`` (the tenant's, from the tenants file) bounds how many and how long.
        ``result_budget``: the tenant's ``max_stored_bytes``; a result that would take its
        records past it is not kept (the job still succeeds, with a ``ResultNotKept`` error
        saying why); 0 keeps any result.
        """
        bounds = dead_letters or DeadLetterBounds()
        more_keys, more_args = self._dispatch_spec(job)
        return self._finalize(
            keys=[*self._final_keys(job.job_id, job.tenant_id), *more_keys],
            args=[
                state.value,
                utc_now(),
                result_json,
                _json(error),
                self._retention,
                job.job_id,
                int(self._lease_now_or_time() * 1000),  # the lease it checks is on Redis' clock
                from_,
                job.attempts,
                job.cycle,
                bounds.most,
                bounds.days * 86_400_000,
                result_budget,
                *more_args,
            ],
        )

    def _lease_now_or_time(self) -> float:
        """``lease_now``, else Redis' own ``TIME`` (one round trip)."""
        now = self.lease_now()
        return server_time(self._redis) if now is None else now

    @staticmethod
    def _final_keys(job_id: str, tenant_id: str) -> list[str]:
        """KEYS of the scripts that include ``final_transition`` (finalize, cancel)."""
        return [
            keys.job(job_id),
            keys.WATCH,
            keys.tenant_dead_letters(tenant_id),
            keys.tenant_counts(tenant_id),
        ]

    def cancel(self, tenant_id: str, job_id: str) -> CancelOutcome:
        """Cancel a waiting job, or flag a running one; return what happened.

        "cancelled" when it will never run, "running" when the handler was asked to
        stop (``ctx.cancel_requested()``), "finished:<state>" when it had already
        finished, "missing" when ``tenant_id`` has no such job.
        """
        # the job's ready set (a job's queue never changes, so it can be read first): a queued
        # job waiting there leaves it in the cancel's own step
        queue = self._redis.hget(keys.job(job_id), "queue")
        ready = [keys.ready(str(queue), tenant_id)] if queue else []
        return self._cancel(
            keys=[*self._final_keys(job_id, tenant_id), keys.PARKED_UNTIL, keys.PARKED_MESSAGES, *ready],
            args=[tenant_id, utc_now(), self._retention, job_id, int(self.now() * 1000)],
        )

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked the running job to stop."""
        return self._redis.hget(keys.job(job_id), "cancelRequested") == "1"

    def postpone_check(self, job_id: str, seconds: float) -> None:
        """A waiting job's message is alive (an execution limit deferred it): check it later.
        A running job's deadline stays its lease."""
        self._postpone_check(keys=[keys.WATCH, keys.job(job_id)], args=[job_id, seconds])

    def postpone_checks(self, job_ids: Sequence[str], seconds: float) -> None:
        """``postpone_check`` for each of ``job_ids`` (messages just published), in one round trip."""
        if not job_ids:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._postpone_check.queue(pipe, keys=[keys.WATCH, keys.job(job_id)], args=[job_id, seconds])
            pipe.execute()

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
        is lost too. ``waiting_lists(queue, tenant, priority)`` names the job's ready set and
        its queue's broker lists (empty when the broker is not this Redis): a queued job in
        its ready set waits for the dispatcher, and one whose queue still holds messages
        gets a few more checks first.
        Two round trips for the whole batch.
        """
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), ["queue", "tenantId", "priority"])
            places: list[list[str | None]] = pipe.execute()
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id, (queue, tenant, priority) in zip(job_ids, places, strict=True):
                lists = waiting_lists(queue, tenant, int(priority or DEFAULT_PRIORITY)) if queue and tenant else []
                self._recover.queue(
                    pipe,
                    keys=[keys.job(job_id), keys.WATCH, *lists],
                    args=[job_id, recheck.lapsed, recheck.queued, recheck.longest, recheck.lane_waits],
                )
            replies = pipe.execute()
        return [job for reply in replies if (job := self._recover.read(reply)) is not None]

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
            load=self.get_listed,
            keep=lambda job: (state is None or job.state == state) and (job_type is None or job.job_type == job_type),
            budget=10 * limit + listing.BATCH,
            gone=gone,
        )
        if gone:
            self._redis.zrem(index, *gone)
        return found

    def get_listed(self, job_ids: Sequence[str]) -> list[Job | None]:
        """The jobs as a listing shows them, in order, in one round trip (``None`` for a
        missing record): only the fields of their documents (``DOCUMENT_FIELDS``) are
        read, so a job's payload never leaves Redis for a listing (it is left empty)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), list(DOCUMENT_FIELDS))
            rows: list[list[str | None]] = pipe.execute()
        records = [{k: v for k, v in zip(DOCUMENT_FIELDS, row, strict=True) if v is not None} for row in rows]
        return [Job.from_redis(raw) if raw.get("jobId") else None for raw in records]
