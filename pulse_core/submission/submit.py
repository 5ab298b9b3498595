"""The submit use case: one job or a batch, from a validated body to an admitted job.

prepare (tenant, idempotency key, fingerprint, jobType, options, queue, message) ->
admit (one Lua script: idempotency, rate limit, backlog, record and the job's place:
due now, into the tenant's ready set for the fair dispatcher; delayed, parked in Redis
until due, whatever the delay). The admission script places every job itself, so a
submit never publishes through kombu and never needs the broker: with the job store's
Redis as broker the script holds the job's message, with another broker (RabbitMQ) the
workers publish the job when they dispatch or release it (``pulse_worker.release``).

The HTTP view validates the body against its schema and calls ``Submitter.submit``
(or ``submit_many``) once; everything after the schema lives here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pulse_core import json_text
from pulse_core.broker.celery_app import encode_message, waiting_lists
from pulse_core.broker.routing import resolve_queue
from pulse_core.errors import BrokerUnavailable, InvalidIdempotencyKey, PayloadTooLarge, PulseError, TenantMismatch
from pulse_core.guards.admission import Admission, Admitted, Submission
from pulse_core.guards.idempotency import fingerprint
from pulse_core.guards.rate_limits import LimitStatus
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.policy import RetryPolicy
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import JobTypeDirectory
from pulse_core.submission.options import resolve
from pulse_core.telemetry import logs, metrics, tracing
from pulse_core.tenants import Tenant, TenantsSource

log = logging.getLogger("pulse.api")

MAX_IDEMPOTENCY_KEY_LENGTH = 200


@dataclass(frozen=True)
class Submitter:
    """What admitting a job needs, held by the API process and passed in (no globals)."""

    settings: Settings
    tenants: TenantsSource
    store: JobStore
    celery: Celery
    job_types: JobTypeDirectory
    #: With its fair dispatcher (``pulse_core.store.dispatch``): it places every job.
    admission: Admission
    #: Jobs are pushed by the admission script (the broker is the job store's Redis).
    inline_publish: bool
    #: Hook for HTTP handlers (``pulse_core.http_handlers``): (tenant id, jobType) -> the
    #: policy of the tenant's registered HTTP handler of that jobType, or ``None``.
    http_job_type: Callable[[str, str], RetryPolicy | None] | None = None

    def __post_init__(self) -> None:
        if self.admission.dispatcher is None:
            raise ValueError("the submitter's admission needs the fair dispatcher: it places every job")

    def submit(self, tenant: Tenant, body: Mapping[str, Any], *, header_key: str | None = None) -> Admitted:
        """Admit one validated job body, or raise the error that refuses it."""
        submission = self.prepare(tenant, body, header_key=header_key)
        logs.bind_job(submission.job)
        try:
            admitted = self.admission.admit(tenant, submission)
        except (RedisConnectionError, RedisTimeoutError):
            # The answer was lost in flight (after redis-py's retries): the script may have
            # run. The record says whether it did; if Redis cannot be asked either, the error
            # stands (the client resends with its idempotency key).
            recorded = self.store.get(submission.job.job_id)
            if recorded is None:
                raise  # nothing was enqueued
            admitted = _admitted_after_all(recorded, submission, self._limit_status(tenant))
        _accepted(admitted)
        return admitted

    def submit_many(
        self,
        tenant: Tenant,
        bodies: Sequence[Any],
        load: Callable[[Any], Mapping[str, Any]],
        load_errors: tuple[type[Exception], ...],
    ) -> list[Admitted | Exception]:
        """Each raw body checked for size, loaded (``load`` validates it; what it raises
        out of ``load_errors`` becomes that item's answer), admitted in one pipelined
        round trip (``Admission.admit_many``: a script run per 100 jobs), answered in order."""
        verdicts: list[Admitted | Exception] = []
        ready: list[tuple[int, Submission]] = []
        refusals: tuple[type[Exception], ...] = (PulseError, *load_errors)
        for body in bodies:
            try:
                _check_size(body, tenant.max_payload_bytes)
                ready.append((len(verdicts), self.prepare(tenant, load(body))))
                verdicts.append(PulseError("not admitted"))  # replaced below
            except refusals as exc:
                verdicts.append(exc)
        submissions = [submission for _, submission in ready]
        try:
            admitted = self.admission.admit_many(tenant, submissions)
        except (RedisConnectionError, RedisTimeoutError):
            # The answer was lost in flight (after redis-py's retry): the script runs may have
            # run, all or some. The records say which jobs were let in, as for one submit.
            found = self._admitted_many_after_all(tenant, submissions)
            if found is None:
                raise  # nothing was enqueued
            admitted = found
        for (position, _), verdict in zip(ready, admitted, strict=True):
            verdicts[position] = verdict
        created = [answer.job for answer in verdicts if isinstance(answer, Admitted) and not answer.replayed]
        _log_accepted_many(created)
        counts = Counter(job.job_type for job in created)
        for job_type, count in counts.items():  # one count per jobType, not per job
            metrics.job_submitted(tenant.tenant_id, job_type, count)
        return verdicts

    def _admitted_many_after_all(
        self, tenant: Tenant, submissions: Sequence[Submission]
    ) -> list[Admitted | PulseError] | None:
        """A batch whose admission answer was lost: each job found recorded was let in (its
        answer as the script's); one not found was not (a 503 for that item: nothing of it was
        enqueued). ``None`` when none was found: a 503 for the whole batch is true."""
        ids = [submission.job.job_id for submission in submissions]
        recorded = self.store.existing(ids)  # if Redis cannot be asked either, that error is the answer
        if not recorded:
            return None
        log.warning("batch: admission answer lost in flight; %d of %d jobs were recorded", len(recorded), len(ids))
        limit = self._limit_status(tenant)
        return [
            Admitted(job=submission.job, replayed=False, limit=limit, published=submission.placed)
            if submission.job.job_id in recorded
            else BrokerUnavailable("Redis did not answer; this job was not enqueued: send it again")
            for submission in submissions
        ]

    def prepare(self, tenant: Tenant, body: Mapping[str, Any], *, header_key: str | None = None) -> Submission:
        """Check what needs no Redis and build the job the admission script may create."""
        claimed_tenant = body.get("tenantId")
        if claimed_tenant is not None and claimed_tenant != tenant.tenant_id:
            raise TenantMismatch("tenantId must be the API key's own tenant (or be left out)")
        key = _idempotency_key(body.get("idempotencyKey"), header_key)
        job_type = body["jobType"]
        settings = self.settings
        live = self.job_types.is_live(job_type)
        policy = self.job_types.policy(job_type)
        if not live and self.http_job_type is not None:  # HTTP handlers hook: the tenant's own jobType
            http_policy = self.http_job_type(tenant.tenant_id, job_type)
            live, policy = (True, http_policy) if http_policy is not None else (live, policy)
        now = self.store.now()
        options = resolve(settings, policy, body.get("options") or {}, now=now)
        metadata = dict(body.get("metadata") or {})
        job = Job(
            job_id=new_job_id(),
            tenant_id=tenant.tenant_id,
            job_type=job_type,
            queue=resolve_queue(self.tenants.config, tenant.tenant_id, job_type, settings.default_queue),
            payload=body["payload"],
            metadata=metadata,
            trace_id=tracing.job_trace_id(metadata.get("traceId")),
            created_at=utc_now(),
            state=JobState.QUEUED if options.due_at is None else JobState.SCHEDULED,
            max_retries=options.max_retries,
            timeout_seconds=options.timeout_seconds,
            due_at=options.due_at,
            priority=options.priority,
            ready_at=options.due_at or now,
        )
        # A delayed job waits parked in Redis until due (however long), not as an ETA message in
        # a worker's memory; the workers' tick releases it (pushing its message with a Redis
        # broker, publishing the job with another: pulse_worker.release). A job due now waits
        # in its ready set for the fair dispatcher (pulse_core.store.dispatch).
        delayed = options.due_at is not None
        message, broker_list = encode_message(self.celery, job) if self.inline_publish else ("", "")
        if delayed and self.inline_publish:
            broker_list = waiting_lists(job.queue)[0]
        return Submission(
            job=job,
            idempotency_key=key,
            fingerprint=fingerprint(body) if key else "",
            job_type_live=live,
            message=message,
            broker_list=broker_list,
            enqueue=not delayed,
            weight=tenant.weight,
            park_seconds=max(0.0, (options.due_at or 0.0) - now) if delayed else None,
            watch_in=settings.queued_check_seconds if options.watch_at is None else options.watch_at - now,
        )

    def _limit_status(self, tenant: Tenant) -> LimitStatus:
        """Where ``tenant`` stands against its rate limit, for the headers of an answer the
        admission script could not give; a placeholder (limit 0) if Redis cannot say either."""
        try:
            return self.admission.status(tenant)
        except RedisError:
            return LimitStatus(limit=0, remaining=0, reset=0.0)


def _accepted(admitted: Admitted) -> None:
    """Count and log a job let in (a replay was counted when it was first admitted)."""
    if admitted.replayed:
        return
    metrics.job_submitted(admitted.job.tenant_id, admitted.job.job_type)
    _log_accepted(admitted.job)


def _log_accepted(job: Job) -> None:
    """The "job accepted" line, with the job's ids (docs/operations.md: one per job)."""
    log.info("job accepted", extra=logs.job_fields(job))  # the same line as under job_context, cheaper


def _log_accepted_many(jobs: Sequence[Job]) -> None:
    """A "job accepted" line for each of ``jobs``: the lines ``_log_accepted`` writes, each
    its own record through the logger's filters and handlers, built for less.

    ``log.info`` builds each record from scratch (the caller's frame, the thread's and
    process's names, ~3.5 µs); a batch's records differ only in their time and the job's
    ids, so one record is built that way and each line is a copy of it with its own time
    and ids. Nothing is built when INFO is off; a custom ``LogRecord`` factory (which
    may add fields of its own per record) gets the ordinary path, one ``log.info`` a job.
    """
    if not jobs or not log.isEnabledFor(logging.INFO):
        return
    if logging.getLogRecordFactory() is not logging.LogRecord:
        for job in jobs:
            _log_accepted(job)
        return
    pathname, lineno, func, _stack = log.findCaller()
    first = log.makeRecord(log.name, logging.INFO, pathname, lineno, "job accepted", (), None, func)
    template = first.__dict__
    since_start = first.relativeCreated - first.created * 1000  # relativeCreated's origin, in ms
    for job in jobs:
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(template)
        created = time.time()  # as LogRecord.__init__ sets its times
        fields["created"] = created
        fields["msecs"] = int((created - int(created)) * 1000) + 0.0
        fields["relativeCreated"] = created * 1000 + since_start
        fields.update(logs.job_fields(job))
        log.handle(record)


def _admitted_after_all(recorded: Job, submission: Submission, limit: LimitStatus) -> Admitted:
    """A job whose admission answer was lost, found recorded: it was accepted."""
    log.warning("job %s: admission answer lost in flight, but the job was recorded", recorded.job_id)
    return Admitted(job=recorded, replayed=False, limit=limit, published=submission.placed)


def _idempotency_key(in_body: str | None, in_header: str | None) -> str | None:
    if in_header is not None:
        if not 1 <= len(in_header) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidIdempotencyKey(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
        if in_body is not None and in_body != in_header:
            raise InvalidIdempotencyKey("Idempotency-Key and idempotencyKey differ; send one")
        return in_header
    return in_body


def _check_size(body: Any, cap: int) -> None:
    size = len(json_text.compact(body).encode("utf-8"))
    if size > cap:
        raise PayloadTooLarge(f"the job is {size} bytes as JSON; the limit is {cap}")
