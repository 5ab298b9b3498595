"""Admission: idempotency, rate limit, backlog cap, storage budget and the job record in one Lua script.

One script run that cannot race decides a submission, in this order:

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
5. **storage budget** — the bytes the tenant's records hold (``max_stored_bytes``,
   counted by ``store/lua/includes/stored_bytes.lua``) plus this record's stay
   within the budget; otherwise ``StorageBudgetFull``, nothing consumed;
6. **record** — consume one slot in every window, write the job hash, count its
   bytes, index it under the tenant, count it pending, watch it (``keys.WATCH``: the
   sweep looks at it if nothing claims it in time), remember the idempotency key
   and place the job's message:

   - a job due now waits in its tenant's ready set of its queue (with its message when
     the broker is this Redis) and, at the end of the run, each queue a job was placed
     on is dispatched (``pulse_core.store.dispatch``): fair order, no added round trip;
   - a delayed job's message is parked in Redis until due (the workers' tick releases it);
   - otherwise the message is pushed as it is, or the caller publishes it.

A batch is admitted by ``admit_batch`` with the same per-job step
(``lua/includes/admit_one.lua``), in request order, ``BATCH_CHUNK`` jobs per script
run (all chunks in one pipelined round trip): each job is decided exactly as a
single submission is, all or nothing for that job.

The scripts are safe to run twice with the same arguments (redis-py retries a call
that timed out): a job id already stored answers ``created`` and changes nothing.

With another broker the API publishes nothing: the job waits in its ready set (or
parked) and a worker publishes it when it dispatches or releases it
(``pulse_worker.release``), so an unreachable broker leaves nothing half-done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from pulse_core import keys
from pulse_core.errors import (
    BacklogFull,
    BrokerUnavailable,
    IdempotencyConflict,
    PulseError,
    StorageBudgetFull,
    UnknownJobType,
)
from pulse_core.guards import rate_limits
from pulse_core.guards.idempotency import store_key
from pulse_core.guards.rate_limits import LimitReached, LimitStatus, WindowStats, whole_seconds, window_stats
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript
from pulse_core.redis_client import refuses_for_now
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.job_store import DEFAULT_RETENTION_SECONDS
from pulse_core.tenants import Tenant

#: Retry-After (seconds) suggested when the backlog is full; jobs finish at their own pace.
BACKLOG_RETRY_AFTER_SECONDS = 1
#: Retry-After (seconds) when the storage budget is full and no finished record is due to
#: expire (the bytes are held by jobs not yet final and dead letters): the length of a bucket.
STORAGE_RETRY_AFTER_SECONDS = 3600
#: A tenant's job index keeps the jobs created within a finished job's retention: admissions
#: trim what is older (the first in each hundredth of the horizon, so at most that much late:
#: ``lua/includes/admit_one.lua``), so the index ends as its records do (GET /v1/jobs lists
#: the last 7 days; an older job is read by its id, a dead one among the dead letters).
INDEX_HORIZON_MS = DEFAULT_RETENTION_SECONDS * 1000
#: Jobs of a batch admitted per script run: a run blocks Redis while it lasts, so a 500-job
#: batch is 5 short runs (sent in one pipelined round trip) rather than one long one.
BATCH_CHUNK = 100
#: A batch job whose script run Redis refused (``Admission.admit_many``).
NOT_ENQUEUED = "Redis refused the write for now; this job was not enqueued: send it again"


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
    #: The job waits in its ready set for the fair dispatcher (a job due now, with a
    #: dispatcher), with ``message`` when the broker is this Redis (else the workers publish it).
    enqueue: bool = False
    #: The tenant's dispatch weight (the tenants file's ``weight``).
    weight: float = 1.0
    #: A delayed job with a dispatcher: ``message`` is parked in Redis for this many seconds
    #: (``keys.PARKED_UNTIL``), then pushed onto ``broker_list`` by the workers' tick; with
    #: another broker it is parked without a message and the tick's worker publishes it.
    park_seconds: float | None = None
    #: For a delayed job: the ETA message's countdown (seconds).
    countdown: float | None = None
    #: In how many seconds the workers' sweep should look at the job if nothing claimed
    #: it: a queued job's message may be lost, a scheduled job's may be held by a dead worker.
    watch_in: float = 60.0
    #: Due beyond the ETA window: no message now, the sweep publishes it when due.
    deferred: bool = False

    @property
    def placed(self) -> bool:
        """Whether admission itself sends the job on its way (its message pushed or parked, or
        the job waiting in its ready set or parked for the workers): nothing left to publish."""
        return bool(self.message) or self.enqueue or self.park_seconds is not None


@dataclass(frozen=True)
class Admitted:
    """A submission let in: the new job, or the original one on an idempotent replay."""

    job: Job
    replayed: bool
    limit: LimitStatus
    #: Whether the job's message is already on its queue (pushed by the script).
    published: bool = False


class AdmitOutcome(StrEnum):
    """How the admission script decided."""

    CREATED = "created"
    #: A known idempotency key with the same fingerprint: the stored job.
    REPLAY = "replay"
    #: A known idempotency key with another fingerprint.
    CONFLICT = "conflict"
    UNKNOWN_TYPE = "unknown-type"
    RATE_LIMITED = "rate-limited"
    BACKLOG = "backlog"
    #: The record would take the tenant past its storage budget.
    STORAGE = "storage"


@dataclass(frozen=True)
class AdmitReply:
    """The admission script's reply (``pulse_core/guards/lua/admit.lua``)."""

    outcome: AdmitOutcome
    windows: WindowStats
    #: REPLAY: the stored job.
    stored: Job | None = None
    #: CONFLICT: the job the idempotency key names.
    other_job_id: str | None = None
    #: BACKLOG: the tenant's jobs not yet final.
    pending: int | None = None
    #: STORAGE: the bytes the tenant's records hold, this record's bytes, and the seconds
    #: until some are released (0: none will be by time alone).
    budget: tuple[int, int, int] | None = None


def _admit_reply(reply: list[Any]) -> AdmitReply:
    outcome, windows = AdmitOutcome(reply[0]), window_stats(reply[1])
    if outcome is AdmitOutcome.REPLAY:
        flat = reply[2]
        return AdmitReply(outcome, windows, stored=Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True))))
    if outcome is AdmitOutcome.CONFLICT:
        return AdmitReply(outcome, windows, other_job_id=str(reply[2]))
    if outcome is AdmitOutcome.BACKLOG:
        return AdmitReply(outcome, windows, pending=int(reply[2]))
    if outcome is AdmitOutcome.STORAGE:
        return AdmitReply(outcome, windows, budget=(int(reply[2]), int(reply[3]), int(reply[4])))
    return AdmitReply(outcome, windows)


def _admit_batch_reply(reply: list[Any]) -> list[AdmitReply]:
    return [_admit_reply(one) for one in reply]


#: Idempotency, jobType, rate limit, backlog, budget and the record in one step (``lua/admit.lua``).
_ADMIT = LuaScript("pulse_core.guards", "admit", _admit_reply)
#: The same for many jobs of one tenant, in order, in one run (``lua/admit_batch.lua``).
_ADMIT_BATCH = LuaScript("pulse_core.guards", "admit_batch", _admit_batch_reply)
#: Where the tenant stands against its limits, reading only (``lua/rate_status.lua``).
_STATUS = LuaScript("pulse_core.guards", "rate_status", window_stats)


@dataclass(frozen=True)
class Readmitted:
    """A dead letter queued again (``job``), or why not (``refusal``: ``None`` when the
    tenant has no such dead letter)."""

    job: Job | None
    refusal: PulseError | None = None


def _readmit_reply(reply: list[Any]) -> Readmitted:
    outcome, windows = reply[0], window_stats(reply[1])
    if outcome == "replayed":
        flat = reply[2]
        return Readmitted(Job.from_redis(dict(zip(flat[::2], flat[1::2], strict=True))))
    if outcome == "missing":
        return Readmitted(None)
    if outcome == "rate-limited":
        retry = whole_seconds(windows.retry_after)
        limit = windows.status.limit
        message = f"rate limit of {limit} reached; retry in {retry} s"
        return Readmitted(None, LimitReached(message, retry_after=retry, limit=windows.status))
    if outcome == "backlog":
        return Readmitted(
            None,
            BacklogFull(
                f"{reply[2]} jobs are not yet final, the most this tenant may have pending; wait for some to finish",
                retry_after=BACKLOG_RETRY_AFTER_SECONDS,
            ),
        )
    raise RuntimeError(f"readmit script answered {outcome!r}")  # a bug, not bad input


#: A dead letter back through the door: rate limit, backlog, watched (``lua/readmit.lua``).
_READMIT = LuaScript("pulse_core.guards", "readmit", _readmit_reply)


class Admission:
    """The door: decides submissions with one script per job (pipelined for batches)."""

    def __init__(self, redis: Redis, *, idempotency_ttl_seconds: int, dispatcher: Dispatcher | None = None) -> None:
        self._redis = redis
        self._ttl = idempotency_ttl_seconds
        #: Enqueues the jobs whose submission says so (``Submission.enqueue``).
        self.dispatcher = dispatcher
        self._admit = _ADMIT.register(redis)
        self._admit_batch = _ADMIT_BATCH.register(redis)
        self._status = _STATUS.register(redis)
        self._readmit = _READMIT.register(redis)

    def admit(self, tenant: Tenant, submission: Submission) -> Admitted:
        """Admit one job or raise the ``PulseError`` that refuses it."""
        keys_, args = self._call(tenant, [submission])
        reply = self._admit(keys=keys_, args=args)
        verdict = _decide(tenant, submission, reply)
        if isinstance(verdict, PulseError):
            raise verdict
        return verdict

    def admit_many(self, tenant: Tenant, submissions: Sequence[Submission]) -> list[Admitted | PulseError]:
        """Admit each job in order, ``BATCH_CHUNK`` per script run, every run in one pipelined
        round trip; one verdict per job.

        Each job is decided as ``admit`` decides it, and the jobs of a run one after the
        other, so limits and idempotency hold per job (two items with the same key in one
        batch: the second replays the first).

        A run Redis refuses for now (out of memory, read-only in a failover: each run is a step
        of its own, so it may come after runs that were let in) answers each of its jobs "not
        enqueued" (503) and the other runs' verdicts stand; only when every run was refused, or
        one failed otherwise, is the error the answer for the whole batch (nothing was enqueued).
        """
        chunks = [submissions[at : at + BATCH_CHUNK] for at in range(0, len(submissions), BATCH_CHUNK)]
        if not chunks:
            return []
        replies = self._admit_batch.call_each(self._redis, [self._call(tenant, chunk) for chunk in chunks])
        errors = [reply for reply in replies if isinstance(reply, ResponseError)]
        if errors and (len(errors) == len(replies) or not all(refuses_for_now(error) for error in errors)):
            raise errors[0]
        verdicts: list[Admitted | PulseError] = []
        for chunk, read in zip(chunks, replies, strict=True):
            if isinstance(read, ResponseError):
                verdicts += [BrokerUnavailable(NOT_ENQUEUED) for _ in chunk]
            else:
                verdicts += [_decide(tenant, s, reply) for s, reply in zip(chunk, read, strict=True)]
        return verdicts

    def _enqueues(self, submission: Submission) -> bool:
        fair = self.dispatcher
        return fair is not None and submission.enqueue and (bool(submission.message) or not fair.inline)

    def _parks(self, submission: Submission) -> bool:
        fair = self.dispatcher
        return (
            fair is not None
            and submission.park_seconds is not None
            and (bool(submission.message) or not fair.inline)  # another broker: parked without one
        )

    def _placement(self, submission: Submission) -> tuple[str, list[str], list[Any]]:
        """What becomes of the job's message in ``admit_one.lua`` (its mode), with the queue's
        dispatch keys (7, padded) and arguments (queue, ready prefix, job prefix, depth)."""
        fair = self.dispatcher
        job = submission.job
        if fair is not None and self._enqueues(submission):
            dispatch_keys, dispatch_args = fair.spec(job.queue)
            return ("enqueue" if fair.inline else "wait"), dispatch_keys, dispatch_args
        if self._parks(submission):
            return "park", [], ["", "", "", 0]
        return ("push" if submission.message else ""), [], ["", "", "", 0]

    def readmit(self, tenant: Tenant, dead: Job, *, check_in: float) -> Readmitted:
        """Queue the dead letter ``dead`` (as read, at its cycle) again, as a submit would be
        let in: within the tenant's rate limit and backlog cap, watched (``check_in`` s)."""
        items = tenant.rate_limits
        return self._readmit(
            keys=[
                keys.job(dead.job_id),
                keys.tenant_dead_letters(tenant.tenant_id),
                keys.tenant_counts(tenant.tenant_id),
                keys.WATCH,
                *rate_limits.window_keys(tenant.tenant_id, items),
            ],
            args=[dead.job_id, dead.cycle, check_in, tenant.max_pending, len(items), *rate_limits.window_args(items)],
        )

    def status(self, tenant: Tenant) -> LimitStatus:
        """Where ``tenant`` stands against its tightest limit, consuming nothing."""
        items = tenant.rate_limits
        windows = self._status(
            keys=rate_limits.window_keys(tenant.tenant_id, items),
            args=[len(items), *rate_limits.window_args(items)],
        )
        return windows.status

    def _call(self, tenant: Tenant, submissions: Sequence[Submission]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``admit``/``admit_batch`` for ``submissions`` (``lua/includes/admit_one.lua``)."""
        items = tenant.rate_limits
        keys_ = [
            keys.tenant_jobs(tenant.tenant_id),
            keys.tenant_counts(tenant.tenant_id),
            keys.WATCH,
            *rate_limits.window_keys(tenant.tenant_id, items),
        ]
        args: list[Any] = [
            tenant.tenant_id,
            self._ttl,
            tenant.max_pending,
            keys.job(""),
            len(items),
            INDEX_HORIZON_MS,
            tenant.max_stored_bytes,
            DEFAULT_RETENTION_SECONDS,
            len(submissions),
            *rate_limits.window_args(items),
        ]
        for submission in submissions:
            job = submission.job
            job_key = keys.job(job.job_id)
            key = submission.idempotency_key
            mode, dispatch_keys, dispatch_args = self._placement(submission)
            keys_ += [
                job_key,
                store_key(tenant.tenant_id, key) if key else job_key,
                submission.broker_list or job_key,
                keys.ready(job.queue, job.tenant_id) if mode in ("enqueue", "wait") else job_key,
                *dispatch_keys,
                *[job_key] * (7 - len(dispatch_keys)),
                keys.PARKED_UNTIL,
                keys.PARKED_MESSAGES,
            ]
            fields = job.to_redis()
            args += [
                job.job_id,
                int(datetime.fromisoformat(job.created_at).timestamp() * 1000),
                submission.fingerprint if key else "",
                "1" if submission.job_type_live else "0",
                submission.message if mode != "wait" else "",
                repr(max(0.0, submission.watch_in)),
                mode,
                *dispatch_args,
                job.priority,
                repr(float(submission.weight)),
                repr(submission.park_seconds or 0.0),
                2 * len(fields),
            ]
            for field, value in fields.items():
                args += [field, value]
        return keys_, args


def _decide(tenant: Tenant, submission: Submission, reply: AdmitReply) -> Admitted | PulseError:
    # A refusal's RateLimit-* headers are the API's to add (pulse_api.jobs.rate_limit_headers).
    return _verdict(tenant, submission, reply)


def _verdict(tenant: Tenant, submission: Submission, reply: AdmitReply) -> Admitted | PulseError:
    job, status, outcome = submission.job, reply.windows.status, reply.outcome
    if outcome is AdmitOutcome.CREATED:
        return Admitted(job=job, replayed=False, limit=status, published=submission.placed)
    if outcome is AdmitOutcome.REPLAY and reply.stored is not None:
        return Admitted(job=reply.stored, replayed=True, limit=status)
    if outcome is AdmitOutcome.CONFLICT:
        return IdempotencyConflict(
            f"idempotency key {submission.idempotency_key!r} was used for job {reply.other_job_id} "
            "with a different body; use a new key for a new job"
        )
    if outcome is AdmitOutcome.UNKNOWN_TYPE:
        return UnknownJobType(job.job_type)
    if outcome is AdmitOutcome.RATE_LIMITED:
        retry = whole_seconds(reply.windows.retry_after)
        return LimitReached(
            f"rate limit of {status.limit} reached; retry in {retry} s",
            retry_after=retry,
            limit=status,
        )
    if outcome is AdmitOutcome.BACKLOG:
        return BacklogFull(
            f"{reply.pending} jobs are not yet final, the most this tenant may have pending; wait for some to finish",
            retry_after=BACKLOG_RETRY_AFTER_SECONDS,
        )
    if outcome is AdmitOutcome.STORAGE and reply.budget is not None:
        used, size, release_in = reply.budget
        return StorageBudgetFull(
            f"the job's record ({size} bytes) does not fit the tenant's storage budget: {used} of "
            f"{tenant.max_stored_bytes} bytes (max_stored_bytes) are held by its jobs, results and "
            "dead letters; they are released as finished records expire",
            retry_after=whole_seconds(release_in or STORAGE_RETRY_AFTER_SECONDS),
        )
    raise RuntimeError(f"admission script answered {reply!r}")  # a bug, not bad input
