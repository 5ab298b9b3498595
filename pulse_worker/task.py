"""The one generic task, as a short pipeline: place -> gate -> claim -> route -> execute -> record.

Before ``place``, one lookup per message finds who runs its jobType here (``look_up``:
a Python handler, else the tenant's HTTP registration); ``place``, ``gate`` and
``route`` all use it. ``place`` parks a job whose jobType has no handler on this worker in
Redis for a moment, for a worker that has one; it goes on (and ``route`` dead-letters it)
only once no live worker has announced the jobType for ``PULSE_UNKNOWN_JOB_TYPE_GRACE_SECONDS``.

``gate`` holds the jobType's execution limits (``pulse_core.guards.execution_limits``)
before anything else: over a limit, nothing is claimed (so waiting never counts as an
attempt) and the job is parked in Redis, its message acked, with either broker; it is
released in order when a slot frees, or when the rate window allows. With the job store's
Redis as broker the releasing script pushes the parked message back onto its queue; with
another broker (RabbitMQ) the job is parked without a message and the worker that releases
it publishes it (``pulse_worker.release``). No deferral message is re-published on a timer
(only when Redis fails the check and refuses the parking too: a one-second ETA message).
A copy that reaches the claim before its job is due is dropped, or parks the job until due.

``record`` sends each outcome one way: success -> ``succeeded``; a cancel the
handler honoured -> ``cancelled``; a failure with attempts left -> ``retrying``, the next
attempt parked in Redis until its backoff (exponential with full jitter) has passed and
then released like a parked job (with either broker: no ETA message waits in a worker); a
permanent failure or the last attempt -> the dead-letter task, which sets ``dead`` and
files the job in its tenant's dead letters.

Until the claim, a Redis or broker failure rejects the message with requeue
(``before_claim``): nothing is recorded yet, so nothing may be acked away.

Celery sees what happened too (Flower shows it): a retried attempt ends in Celery's
``Retry`` (RETRY), a dead job in ``JobDead`` (FAILURE), raised once the record is final.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject, Retry
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_core import keys
from pulse_core.broker.celery_app import DEAD_LETTER_TASK, RUN_JOB_TASK, destination
from pulse_core.context import JobContext
from pulse_core.errors import (
    AttemptHandedOff,
    JobCancelled,
    JobDead,
    JobFailed,
    PermanentError,
    RetryLater,
    UnknownJobTypeAtWorker,
    WorkerLost,
)
from pulse_core.guards.execution_limits import ExecutionLimits, ParkedMessage, Parker, Verdict, needs_tenant
from pulse_core.handlers import HandlerSpec
from pulse_core.http_handlers.registrations import Registration
from pulse_core.jobs import Job, JobState
from pulse_core.policy import DEFAULT_MAX_RETRIES, effective, plan_delay
from pulse_core.redis_client import server_time
from pulse_core.store.job_store import ClaimRefusal, FailureOutcome
from pulse_core.store.job_types import live_on_queue
from pulse_core.submission.parked import parked_message
from pulse_core.telemetry import logs, metrics, tracing
from pulse_core.telemetry.metrics import Outcome
from pulse_worker import observe
from pulse_worker.outcome import describe_error, encode_result
from pulse_worker.release import publish_released
from pulse_worker.runtime import WorkerRuntime, lease_owner

log = logging.getLogger("pulse.worker")

#: A message that reached a worker without its jobType's handler, while another live worker
#: has it, is re-published after a random wait in this range (seconds). Not shorter: an idle
#: worker re-issues its ``BRPOP`` every second (kombu's ``brpop_timeout``), and Redis hands a
#: pushed message to the client blocked longest, so for about a second after it gave a job
#: back the worker that cannot run it is first in line for it again, time after time (a job
#: bounced 70 times in a minute between a wrong worker and its own release, while a worker
#: with its handler stood idle). Random, so no fixed phase between the two favours either.
WRONG_WORKER_DELAY_SECONDS = (1.0, 2.0)
#: Once in this time (ms) per job, such a message goes straight back to the front of its queue
#: instead of waiting: the worker that gives it back pushes it while its pool process still
#: holds the delivery, so it has just re-issued its ``BRPOP`` or (one pool process) has none
#: out, and an idle worker with the handler, blocked longer, takes it at once. Only parked and
#: put back by a tick, a job bounced 9 times in a row off an idle worker without its handler,
#: and once stayed queued 90 s beside an idle worker with it.
PUSH_BACK_EVERY_MS = 1000
#: While no live worker announces a message's jobType, it is looked at again this often.
HOMELESS_RECHECK_SECONDS = 5.0
#: How long past its grace period a job's ``keys.homeless_since`` outlives the last message of
#: it that found no live worker (each such message renews it: on a busy queue one round trip
#: through parking and the queue can take minutes, and the grace must not start again).
HOMELESS_KEPT_SECONDS = 3600
#: A message given back after a Redis or broker failure before its claim waits this long
#: first, so that a worker does not spin on a Redis that refuses it.
GIVE_BACK_PAUSE_SECONDS = 1.0
#: A job whose execution limits Redis failed to check is looked at again this much later.
UNCHECKED_DEFER_SECONDS = 1.0

_LOST = {"type": WorkerLost.__name__, "message": "the attempt's worker died before it finished"}


def run_job(
    runtime: WorkerRuntime,
    task: Task,
    job_id: str,
    attempt: int | None,
    cycle: int | None,
    homeless_since: float | None = None,
) -> None:
    """Run one attempt of ``job_id``: the whole pipeline, step by step."""
    with before_claim(task, job_id):
        handling = look_up(runtime, task, job_id)
        if place(runtime, task, job_id, handling, homeless_since):
            return  # it waits in Redis for a worker that has its handler; its message is acked
        verdict = gate(runtime, task, job_id, handling)
    if verdict.parked:
        return  # it waits in Redis; its message is acked
    try:
        with before_claim(task, job_id):
            job = claim(runtime, task, job_id, attempt, cycle)
        if job is None:
            return
        with observe.attempt(job):
            spec = route(runtime, task, job, handling)
            if spec is None:
                return
            record(runtime, task, job, spec, *execute(runtime, job, spec))
    finally:
        released = runtime.gate.leave(verdict).to_publish
        publish_released(task.app, runtime.store, released, check_in=runtime.settings.queued_check_seconds)


@contextmanager
def before_claim(task: Task, job_id: str) -> Iterator[None]:
    """Until the attempt is claimed, a Redis or broker failure gives the message back.

    Celery acks a task that raised (``task_acks_on_failure_or_timeout``) and drops the
    message of a retry it could not publish; before the claim nothing was recorded, so
    either would lose the job. Instead the message is rejected with requeue, after a
    pause so a broken Redis is not hammered; if even the requeue cannot be written, the
    job is still watched (queued, with a deadline) and the recovery sweep republishes it
    (RabbitMQ redelivers an unacked message itself).
    """
    try:
        yield
    except Reject as exc:
        if exc.requeue:
            raise
        log.warning("job %s: could not re-publish its message (%s); message given back", job_id, exc.reason)
        time.sleep(GIVE_BACK_PAUSE_SECONDS)
        raise Reject(exc.reason, requeue=True) from None
    except (RedisError, KombuError, OSError) as exc:
        log.warning("job %s: %s before its claim (%s); message given back", job_id, type(exc).__name__, exc)
        time.sleep(GIVE_BACK_PAUSE_SECONDS)
        raise Reject(exc, requeue=True) from None


@dataclass(frozen=True)
class Handling:
    """Who runs a message's jobType on this worker, looked up once per message."""

    job_type: str
    #: The job's tenant, when the record was read (no shadow name, or no Python handler).
    tenant_id: str | None = None
    #: The Python handler registered here for the jobType.
    spec: HandlerSpec | None = None
    #: Else the tenant's HTTP handler of the jobType (any worker can deliver it).
    registration: Registration | None = None
    #: No job record: nothing to do, the claim drops the message.
    missing: bool = False


def look_up(runtime: WorkerRuntime, task: Task, job_id: str) -> Handling:
    """Step 0: the message's jobType (its shadow name, else the record) and its handler
    here: a Python handler, else the tenant's HTTP registration. The record's jobType
    and tenant are read at most once, and only when the shadow name does not settle it."""
    job_type: str = getattr(task.request, "shadow", None) or ""
    spec = runtime.registry.get(job_type) if job_type else None
    if job_type and (spec is not None or runtime.http is None):
        return Handling(job_type, spec=spec)
    found = runtime.store.type_and_tenant(job_id)
    if found is None:
        return Handling(job_type, missing=True)
    job_type, tenant_id = found
    spec = runtime.registry.get(job_type)
    if spec is not None or runtime.http is None:
        return Handling(job_type, tenant_id, spec=spec)
    return Handling(job_type, tenant_id, registration=runtime.http.registration(tenant_id, job_type))


def place(runtime: WorkerRuntime, task: Task, job_id: str, handling: Handling, homeless_since: float | None) -> bool:
    """Step 0: a job whose jobType has no handler here goes back for a worker that has one.

    It is parked in Redis and its message acked (``True``): the workers' tick puts it back
    on its queue (any worker on the queue may take it), as a delayed job, so no message
    waits in this worker. While a live worker on the job's queue announces the jobType it
    waits ``WRONG_WORKER_DELAY_SECONDS`` (1 to 2 s). While none does (none at all, or only workers of
    other queues, which never take it), it waits a few seconds at a time until
    ``PULSE_UNKNOWN_JOB_TYPE_GRACE_SECONDS`` have passed since a message of it first found no
    live worker (``keys.homeless_since``); then it goes on (``False``), and ``route``
    dead-letters it as ``UnknownJobTypeAtWorker``. (Without the fair dispatcher it goes back
    as a short ETA message that carries that time.)
    """
    if handling.missing or handling.spec is not None or handling.registration is not None:
        return False  # no record (the claim drops the message), or this worker can run it
    job_type = handling.job_type
    # Redis' clock: the grace's start is shared by every worker the job meets, so a host
    # whose clock runs ahead must not count it as long over
    now = server_time(runtime.redis)
    grace = runtime.settings.unknown_job_type_grace_seconds
    parks = runtime.store.dispatcher is not None
    queue = runtime.redis.hget(keys.job(job_id), "queue") or runtime.settings.default_queue
    if live_on_queue(runtime.redis, job_type, str(queue)):
        since, delay = None, random.uniform(*WRONG_WORKER_DELAY_SECONDS)
        if parks:  # its grace starts afresh should no live worker announce it again
            runtime.redis.delete(keys.homeless_since(job_id))
            if _pushed_back(runtime, task, job_id):
                log.info(
                    "job %s (%s): no handler on this worker; back to the front of its queue for one that has it",
                    job_id,
                    job_type,
                )
                return True
        log.info("job %s (%s): no handler on this worker; back to its queue for one that has it", job_id, job_type)
    else:
        if homeless_since is not None:  # a message that carries it (sent without the dispatcher)
            since = homeless_since
        else:
            since = _homeless_since(runtime, job_id, now, grace) if parks else now
        left = grace - (now - since)
        if left <= 0:
            return False
        delay = min(left, HOMELESS_RECHECK_SECONDS)
        log.warning(
            "job %s (%s): no live worker has its handler on queue %s; dead-lettered in %.0f s unless one starts",
            job_id,
            job_type,
            queue,
            left,
        )
    with contextlib.suppress(RedisError):  # it lives on: the sweep need not republish it yet
        runtime.store.postpone_check(job_id, delay + runtime.settings.queued_check_seconds)
    if parks:
        parked = _parker(runtime, task, job_id)()
        if parked is not None:  # else no record: the claim drops the message
            runtime.gate.park_until(job_id, delay, parked)
        return True
    kwargs = {**(task.request.kwargs or {}), "homeless_since": since}
    raise task.retry(countdown=delay, max_retries=None, kwargs=kwargs)


def _pushed_back(runtime: WorkerRuntime, task: Task, job_id: str) -> bool:
    """Put a job whose handler this worker lacks straight back at the front of its queue (a
    Redis broker), unless that was done for it within ``PUSH_BACK_EVERY_MS``. ``True``: it
    went back, or it has no record (the claim drops the message)."""
    if not runtime.redis.set(keys.pushed_back(job_id), "1", nx=True, px=PUSH_BACK_EVERY_MS):
        return False
    parked = _parker(runtime, task, job_id)()
    if parked is not None:
        with contextlib.suppress(RedisError):  # it lives on: the sweep need not republish it yet
            runtime.store.postpone_check(job_id, runtime.settings.queued_check_seconds)
        # the front (kombu pops from the right), as a message rejected with requeue goes back
        runtime.redis.rpush(parked.broker_list, parked.message)
    return True


def _homeless_since(runtime: WorkerRuntime, job_id: str, now: float, grace: float) -> float:
    """When a message of ``job_id`` first found no live worker for its jobType (``now`` if
    this is the first), kept in Redis while such messages keep coming, and a while after."""
    key = keys.homeless_since(job_id)
    kept = math.ceil(grace) + HOMELESS_KEPT_SECONDS
    with runtime.redis.pipeline(transaction=False) as pipe:
        pipe.set(key, repr(now), nx=True, ex=kept)
        pipe.expire(key, kept)
        pipe.get(key)
        _, _, found = pipe.execute()
    return float(found) if found else now


def gate(runtime: WorkerRuntime, task: Task, job_id: str, handling: Handling) -> Verdict:
    """Step 0: take the jobType's run slot and rate-window hit, or park the job in Redis."""
    if handling.missing:
        return Verdict()  # no record: the claim drops the message
    config = runtime.tenants_config()
    job_type, tenant_id = handling.job_type, handling.tenant_id
    job_type_rules = handling.registration is None
    if handling.registration is not None:
        # a tenant's HTTP jobType: its limits are its own (not the tenants file's jobType
        # tables), on top of its tenant's max_running, which counts every jobType of the tenant
        declared, scope = handling.registration.limits, f"http:{tenant_id}:{job_type}"
    else:
        declared = handling.spec.limits if handling.spec is not None else ExecutionLimits()
        scope = job_type
        if tenant_id is None and needs_tenant(config, job_type):
            found = runtime.store.type_and_tenant(job_id)
            if found is None:
                return Verdict()  # no record: the claim drops the message
            tenant_id = found[1]
    park = _parker(runtime, task, job_id) if runtime.store.dispatcher is not None else None
    try:
        verdict = runtime.gate.enter(job_id, scope, tenant_id, declared, config, park, job_type_rules=job_type_rules)
    except RedisError as exc:  # an unchecked limit must not run the job, nor lose it
        log.warning("job %s: execution limits not checked (%s); deferred", job_id, exc)
        unchecked = _park_unchecked(runtime, job_id, park)
        if unchecked is None:
            return Verdict()  # no record: the claim drops the message
        verdict = unchecked
    # the jobs handed the slots it gave back (its rate window was full), on another broker
    publish_released(task.app, runtime.store, verdict.released, check_in=runtime.settings.queued_check_seconds)
    if verdict.parked:
        if verdict.reason in ("concurrency", "rate"):
            metrics.execution_deferred(tenant_id or metrics.UNKNOWN, job_type)
        log.debug("job %s (%s) parked: %s limit", job_id, job_type, verdict.reason)
        with contextlib.suppress(RedisError):  # parked, not lost: the sweep need not republish it yet
            runtime.store.postpone_check(job_id, runtime.settings.queued_check_seconds)
        return verdict
    if verdict.defer_seconds is not None:
        if verdict.reason in ("concurrency", "rate"):
            metrics.execution_deferred(tenant_id or metrics.UNKNOWN, job_type)
        log.debug("job %s (%s) deferred %.2f s: %s limit", job_id, job_type, verdict.defer_seconds, verdict.reason)
        with contextlib.suppress(RedisError):  # its message lives on: the sweep need not republish it yet
            runtime.store.postpone_check(job_id, verdict.defer_seconds + runtime.settings.queued_check_seconds)
        raise task.retry(countdown=verdict.defer_seconds, max_retries=None)
    return verdict


def _park_unchecked(runtime: WorkerRuntime, job_id: str, park: Parker | None) -> Verdict | None:
    """A job whose limits Redis failed to check waits ``UNCHECKED_DEFER_SECONDS`` and is
    looked at again: parked in Redis like a delayed job when Redis takes that (a passing
    error); when it cannot (Redis is down), deferred as a short ETA message, the only place
    left to wait (``None``: no such job)."""
    if park is not None:
        try:
            parked = park()
            if parked is None:
                return None
            runtime.gate.park_until(job_id, UNCHECKED_DEFER_SECONDS, parked)
            return Verdict(reason="error", parked=True)
        except RedisError as exc:
            log.warning("job %s: not parked either (%s); deferred as an ETA message", job_id, exc)
    return Verdict(defer_seconds=UNCHECKED_DEFER_SECONDS, reason="error")


def _parker(runtime: WorkerRuntime, task: Task, job_id: str) -> Parker:
    """How a job over a limit is parked (built only when it must wait): with a Redis broker,
    the message that starts this attempt again, pushed onto its queue's dispatch list when it
    is released; with another broker, no message: the releasing worker publishes the job."""

    def park() -> ParkedMessage | None:
        job = runtime.store.get(job_id)
        if job is None:
            return None
        return parked_message(task.app, runtime.store.dispatcher, job)

    return park


def claim(runtime: WorkerRuntime, task: Task, job_id: str, attempt: int | None, cycle: int | None) -> Job | None:
    """Step 1: atomically claim the attempt; a redelivered or stale message claims nothing."""
    spec = runtime.registry.get(getattr(task.request, "shadow", None) or "")  # an HTTP job has its maxRetries
    outcome = runtime.store.claim(
        job_id,
        owner=lease_owner(task.request.hostname or "", task.request.id),
        lease_seconds=runtime.settings.lease_seconds,
        attempt=attempt,
        cycle=cycle,
        fallback_max_retries=spec.policy.max_retries if spec else DEFAULT_MAX_RETRIES,
        lost_error=_LOST,
    )
    if outcome.job is not None and outcome.refused is None:
        if outcome.after_crash:
            log.warning(
                "job %s: attempt %d crashed; attempt %d starts", job_id, outcome.job.attempts - 1, outcome.job.attempts
            )
        return outcome.job
    if outcome.refused is ClaimRefusal.EXHAUSTED and outcome.job is not None:
        # The last attempt's worker died (or it died while being dead-lettered).
        log.warning("job %s is dead: its last attempt's worker died", job_id)
        bounds = runtime.dead_letter_bounds(outcome.job.tenant_id)
        if runtime.store.finalize(outcome.job, JobState.DEAD, from_="orphan", dead_letters=bounds):
            metrics.job_finished(outcome.job, Outcome.DEAD)
            raise _dead(outcome.job, WorkerLost.__name__)
    elif outcome.refused is ClaimRefusal.CANCEL and outcome.job is not None:
        if runtime.store.finalize(outcome.job, JobState.CANCELLED, from_="orphan"):
            metrics.job_cancelled(outcome.job.tenant_id, outcome.job.job_type)
        log.warning("job %s is cancelled: its worker died after the cancel was asked", job_id)
    elif outcome.refused is ClaimRefusal.EARLY and outcome.due_at is not None:
        early(runtime, task, job_id, max(0.0, outcome.due_at - runtime.store.now()))
    elif outcome.refused is ClaimRefusal.MISSING:
        log.warning("job %s: no such record (expired or never stored); message dropped", job_id)
    else:
        log.info("job %s not claimed: %s", job_id, outcome.refused)
    return None


def early(runtime: WorkerRuntime, task: Task, job_id: str, wait: float) -> None:
    """A copy that arrived ``wait`` seconds before its job is due (a clock ahead of Redis',
    a stray copy). A job parked until due already is released then (and watched meanwhile):
    the copy is dropped. Else the job is parked until due, as a delayed job, with no ETA
    message in this worker (an ETA message only without the dispatcher)."""
    if runtime.store.dispatcher is None:
        raise task.retry(countdown=wait, max_retries=None)
    parked = _parker(runtime, task, job_id)()
    if parked is None:
        log.warning("job %s: no such record (expired or never stored); message dropped", job_id)
    elif runtime.gate.park_until(job_id, wait, parked, unless_parked=True):
        log.info("job %s arrived %.1f s before it is due: parked until then", job_id, wait)
    else:
        log.info("job %s arrived %.1f s before it is due, parked already: copy dropped", job_id, wait)


def route(runtime: WorkerRuntime, task: Task, job: Job, handling: Handling) -> HandlerSpec | None:
    """Step 2: the handler ``look_up`` found for the job's jobType (a Python handler, else
    the tenant's own HTTP handler, delivering this claimed job); dead-letter it if none."""
    spec = handling.spec
    if spec is None and handling.registration is not None and runtime.http is not None:
        spec = runtime.http.handler(job, handling.registration)
    if spec is None and dead_letter(runtime, task, job, UnknownJobTypeAtWorker(job.job_type)):
        raise _dead(job, UnknownJobTypeAtWorker.__name__)
    return spec


def execute(runtime: WorkerRuntime, job: Job, spec: HandlerSpec) -> tuple[str | None, BaseException | None]:
    """Step 3: call the handler; return its encoded result or its error."""
    max_retries, _ = effective(spec.policy, max_retries=job.max_retries, timeout=None)
    ctx = JobContext(
        job_id=job.job_id,
        tenant_id=job.tenant_id,
        job_type=job.job_type,
        attempt=job.attempts,
        trace_id=job.trace_id,
        max_retries=max_retries,
        cancel_requested=lambda: runtime.store.cancel_requested(job.job_id),
        span_factory=tracing.handler_span,
    )
    try:
        return encode_result(spec.fn(job.payload, ctx), runtime.settings.result_max_bytes), None
    except Exception as exc:  # every handler failure is an outcome, never a crash
        return None, exc


def record(
    runtime: WorkerRuntime,
    task: Task,
    job: Job,
    spec: HandlerSpec,
    result_json: str | None,
    exc: BaseException | None,
) -> None:
    """Step 4: record the outcome: succeeded, cancelled, retrying or dead."""
    if isinstance(exc, AttemptHandedOff):  # an HTTP handler's 202: it reports the outcome itself
        log.info("job %s (%s) attempt %d handed off: %s", job.job_id, job.job_type, job.attempts, exc)
        return
    if exc is None:
        budget = runtime.stored_bytes_budget(job.tenant_id)
        if runtime.store.finalize(job, JobState.SUCCEEDED, result_json=result_json or "null", result_budget=budget):
            metrics.job_finished(job, Outcome.SUCCEEDED)
            log.info("job succeeded")
        return
    tracing.record_error(exc)
    if not isinstance(exc, JobFailed):
        log.warning(
            "job %s (%s) attempt %d raised %s: %s", job.job_id, job.job_type, job.attempts, type(exc).__name__, exc
        )
    if isinstance(exc, JobCancelled) or runtime.store.cancel_requested(job.job_id):
        if runtime.store.finalize(job, JobState.CANCELLED, error=describe_error(exc)):
            metrics.job_finished(job, Outcome.CANCELLED)
        log.info("job %s (%s) cancelled", job.job_id, job.job_type)
        return
    max_retries, _ = effective(spec.policy, max_retries=job.max_retries, timeout=None)
    if isinstance(exc, PermanentError) or job.attempts >= max_retries + 1:
        if dead_letter(runtime, task, job, exc):
            raise _dead(job, type(exc).__name__)
        return
    delay = exc.seconds if isinstance(exc, RetryLater) else spec.policy.delay_before(job.attempts + 1)
    retry(runtime, task, job, exc, delay)


def retry(runtime: WorkerRuntime, task: Task, job: Job, exc: BaseException, delay: float) -> None:
    """Mark the job ``retrying`` and send the next attempt's message when it is due.

    With the fair dispatcher (either broker) the job waits parked in Redis until due
    (``ExecutionGate.park_until``): the workers' tick releases it, pushing its message with
    a Redis broker, publishing it with another. Without one it is Celery's retry (an ETA
    message); a delay longer than the ETA window then sends nothing: the recovery sweep
    publishes the job when it is due, so no message waits unacked for long.
    """
    settings = runtime.settings
    plan = plan_delay(
        delay,
        now=runtime.store.now(),
        eta_window_seconds=settings.eta_window_seconds,
        lease_seconds=settings.lease_seconds,
    )
    scheduled = runtime.store.schedule_retry(job, due_at=plan.due_at, watch_at=plan.watch_at, error=describe_error(exc))
    if scheduled is FailureOutcome.CANCEL:  # a cancel asked since record() looked: cancelled, not retried
        if runtime.store.finalize(job, JobState.CANCELLED, error=describe_error(exc)):
            metrics.job_finished(job, Outcome.CANCELLED)
        log.info("job %s (%s) cancelled", job.job_id, job.job_type)
        return
    if scheduled is not FailureOutcome.RECORDED:
        log.warning("job %s: attempt %d no longer owned; outcome dropped", job.job_id, job.attempts)
        return
    metrics.job_finished(job, Outcome.RETRIED)
    log.info("job %s (%s) attempt %d failed; retry in %.1f s", job.job_id, job.job_type, job.attempts, delay)
    if runtime.store.dispatcher is not None:
        # The next attempt waits in Redis, not in a worker: the tick releases it when due.
        runtime.gate.park_until(job.job_id, delay, parked_message(task.app, runtime.store.dispatcher, job))
        raise Retry(f"retry in {delay:.1f} s, parked in Redis", exc=exc if isinstance(exc, Exception) else None)
    if plan.eta_message:
        raise task.retry(
            kwargs={"attempt": job.attempts + 1, "cycle": job.cycle},
            countdown=delay,
            max_retries=None,
            exc=exc if isinstance(exc, Exception) else None,
        )
    # No message now (the sweep publishes it when due), but Celery and Flower still
    # see this attempt as retried: Retry acks the message and sends task-retried.
    raise Retry(f"retry in {delay:.1f} s, published when due", exc=exc if isinstance(exc, Exception) else None)


def dead_letter(runtime: WorkerRuntime, task: Task, job: Job, exc: BaseException) -> bool:
    """Hand the job to the dead-letter task, having recorded its last error; ``False``
    when the attempt is no longer this worker's to end."""
    error = describe_error(exc)
    marked = runtime.store.mark_dead_letter(job, error)
    if marked is FailureOutcome.CANCEL:  # a cancel asked since record() looked: cancelled, not dead
        if runtime.store.finalize(job, JobState.CANCELLED, error=error):
            metrics.job_finished(job, Outcome.CANCELLED)
        log.info("job %s (%s) cancelled", job.job_id, job.job_type)
        return False
    if marked is not FailureOutcome.RECORDED:
        return False
    queue, priority = destination(task.app, job)
    task.app.send_task(
        DEAD_LETTER_TASK,
        args=(job.job_id,),
        kwargs={"attempt": job.attempts, "cycle": job.cycle, "error": error},
        queue=queue,
        priority=priority,
        shadow=f"dead-letter:{job.job_type}",
        kwargsrepr=repr({"attempt": job.attempts, "cycle": job.cycle}),
    )
    return True


def _dead(job: Job, error_type: str) -> JobDead:
    """The failure the task ends with once ``job`` is dead, so Flower lists it as failed.

    Raised only after the record says so (or the dead-letter task is on its way); the
    message is acked like any other (``task_acks_on_failure_or_timeout``), never redelivered.
    """
    return JobDead(f"job {job.job_id} ({job.job_type}) is dead after {job.attempts} attempt(s): {error_type}")


def record_dead_letter(runtime: WorkerRuntime, job_id: str, attempt: int, cycle: int, error: Mapping[str, Any]) -> None:
    """The dead-letter task's body: ``dead``, filed under the tenant's dead letters."""
    job = runtime.store.get(job_id)
    if job is not None:
        logs.bind_job(job)
    if job is None or job.attempts != attempt or job.cycle != cycle:
        log.info("dead letter for job %s attempt %d: nothing to do", job_id, attempt)
        return
    if runtime.store.finalize(job, JobState.DEAD, error=error, dead_letters=runtime.dead_letter_bounds(job.tenant_id)):
        metrics.job_finished(job, Outcome.DEAD)
        log.info("job %s (%s) is dead after %d attempt(s): %s", job_id, job.job_type, attempt, error.get("type"))


def install(app: Celery, runtime: WorkerRuntime) -> tuple[Any, Any]:
    """Register the generic task and the dead-letter task on ``app``, bound to ``runtime``."""

    # throws: a dead job is an expected failure, logged in one line without a traceback.
    @app.task(name=RUN_JOB_TASK, bind=True, ignore_result=True, max_retries=None, throws=(JobDead,))
    def pulse_run_job(
        self: Task,
        job_id: str,
        attempt: int | None = None,
        cycle: int | None = None,
        homeless_since: float | None = None,
    ) -> None:
        with logs.job_context(jobId=job_id):
            run_job(runtime, self, job_id, attempt, cycle, homeless_since)

    @app.task(name=DEAD_LETTER_TASK, ignore_result=True)
    def pulse_dead_letter(job_id: str, attempt: int, cycle: int, error: dict[str, Any]) -> None:
        with logs.job_context(jobId=job_id):
            record_dead_letter(runtime, job_id, attempt, cycle, error)

    return pulse_run_job, pulse_dead_letter
