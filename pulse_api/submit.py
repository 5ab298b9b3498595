"""Admitting jobs: a short pipeline of guard steps, one job or a batch.

prepare (tenant, idempotency key, fingerprint, jobType, options, message) -> admit
(one Lua script: idempotency, rate limit, backlog, record and, when the broker is
the job store's Redis, the message itself) -> otherwise publish through kombu, or
undo. A job delayed beyond the ETA window gets no message yet: the workers' sweep
publishes it when it is due.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kombu.exceptions import KombuError
from marshmallow import ValidationError
from redis.exceptions import RedisError

from pulse_api.options import resolve
from pulse_api.schemas import JobSubmitSchema
from pulse_api.services import Services
from pulse_core.broker.celery_app import encode_message, publish_job, publish_jobs
from pulse_core.broker.routing import resolve_queue
from pulse_core.errors import (
    BrokerUnavailable,
    InvalidIdempotencyKey,
    PayloadTooLarge,
    PulseError,
    TenantMismatch,
)
from pulse_core.guards.admission import Admitted, Submission
from pulse_core.guards.idempotency import fingerprint, store_key
from pulse_core.jobs import Job, JobState, new_job_id, utc_now
from pulse_core.telemetry import logs, metrics, tracing
from pulse_core.tenants import Tenant

log = logging.getLogger("pulse.api")

PUBLISH_ERRORS = (KombuError, OSError, RedisError)
MAX_IDEMPOTENCY_KEY_LENGTH = 200


def submit_job(svc: Services, tenant: Tenant, body: Mapping[str, Any], *, header_key: str | None = None) -> Admitted:
    """Admit and publish one validated job body, or raise the error that refuses it."""
    submission = prepare(svc, tenant, body, header_key=header_key)
    logs.bind_job(submission.job)
    admitted = svc.admission.admit(tenant, submission)
    if _needs_publish(submission, admitted):
        try:
            publish_job(svc.celery, admitted.job, countdown=submission.countdown)
        except PUBLISH_ERRORS as exc:
            raise _undo(svc, tenant, submission, exc) from exc
    _accepted(admitted)
    return admitted


def submit_batch(svc: Services, tenant: Tenant, bodies: Sequence[Any]) -> list[Admitted | PulseError | ValidationError]:
    """Each body validated, admitted (one pipelined round trip) and published, in order."""
    schema = JobSubmitSchema()
    verdicts: list[Admitted | PulseError | ValidationError] = []
    ready: list[tuple[int, Submission]] = []
    for body in bodies:
        try:
            _check_size(body, tenant.max_payload_bytes)
            ready.append((len(verdicts), prepare(svc, tenant, schema.load(body))))
            verdicts.append(ValidationError("not admitted"))  # replaced below
        except (PulseError, ValidationError) as exc:
            verdicts.append(exc)
    admitted = svc.admission.admit_many(tenant, [submission for _, submission in ready])
    fresh: list[tuple[int, Submission, Admitted]] = []
    for (position, submission), verdict in zip(ready, admitted, strict=True):
        verdicts[position] = verdict
        if isinstance(verdict, Admitted) and _needs_publish(submission, verdict):
            fresh.append((position, submission, verdict))
    if fresh:
        sent = 0
        try:
            pairs = ((verdict.job, item.countdown) for _, item, verdict in fresh)
            sent = publish_jobs(svc.celery, pairs)
        except PUBLISH_ERRORS as exc:
            for position, submission, _ in fresh[sent:]:
                verdicts[position] = _undo(svc, tenant, submission, exc)
    for answer in verdicts:
        if isinstance(answer, Admitted):
            _accepted(answer)
    return verdicts


def _accepted(admitted: Admitted) -> None:
    """Count and log a job let in (a replay was counted when it was first admitted)."""
    if admitted.replayed:
        return
    with logs.job_context(**logs.job_fields(admitted.job)):
        metrics.job_submitted(admitted.job.tenant_id, admitted.job.job_type)
        log.info("job accepted")


def prepare(svc: Services, tenant: Tenant, body: Mapping[str, Any], *, header_key: str | None = None) -> Submission:
    """Check what needs no Redis and build the job the admission script may create."""
    claimed_tenant = body.get("tenantId")
    if claimed_tenant is not None and claimed_tenant != tenant.tenant_id:
        raise TenantMismatch("tenantId must be the API key's own tenant (or be left out)")
    key = _idempotency_key(body.get("idempotencyKey"), header_key)
    job_type = body["jobType"]
    tenants = svc.tenants.config
    live = svc.job_types.is_live(job_type)
    options = resolve(svc.settings, svc.job_types.policy(job_type), body.get("options") or {})
    metadata = dict(body.get("metadata") or {})
    job = Job(
        job_id=new_job_id(),
        tenant_id=tenant.tenant_id,
        job_type=job_type,
        queue=resolve_queue(tenants, tenant.tenant_id, job_type, svc.settings.default_queue),
        payload=body["payload"],
        metadata=metadata,
        trace_id=tracing.job_trace_id(metadata.get("traceId")),
        created_at=utc_now(),
        state=JobState.QUEUED if options.due_at is None else JobState.SCHEDULED,
        max_retries=options.max_retries,
        timeout_seconds=options.timeout_seconds,
        due_at=options.due_at,
        priority=options.priority,
    )
    # Due beyond the ETA window: no message now; the sweep publishes it when due.
    deferred = options.due_at is not None and options.countdown is None
    inline = svc.inline_publish and not deferred
    message, broker_list = encode_message(svc.celery, job, countdown=options.countdown) if inline else ("", "")
    return Submission(
        job=job,
        idempotency_key=key,
        fingerprint=fingerprint(body) if key else "",
        job_type_live=live,
        message=message,
        broker_list=broker_list,
        countdown=options.countdown,
        watch_at=options.watch_at,
        deferred=deferred,
    )


def _needs_publish(submission: Submission, admitted: Admitted) -> bool:
    """Whether the caller still has to send the job's message through kombu."""
    return not (admitted.replayed or admitted.published or submission.deferred)


def _idempotency_key(in_body: str | None, in_header: str | None) -> str | None:
    if in_header is not None:
        if not 1 <= len(in_header) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidIdempotencyKey(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
        if in_body is not None and in_body != in_header:
            raise InvalidIdempotencyKey("Idempotency-Key and idempotencyKey differ; send one")
        return in_header
    return in_body


def _check_size(body: Any, cap: int) -> None:
    size = len(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    if size > cap:
        raise PayloadTooLarge(f"the job is {size} bytes as JSON; the limit is {cap}")


def _undo(svc: Services, tenant: Tenant, submission: Submission, exc: Exception) -> PulseError:
    job = submission.job
    log.warning("publish of job %s failed, record discarded: %s", job.job_id, exc)
    key = submission.idempotency_key
    svc.store.discard(job, idempotency_key=store_key(tenant.tenant_id, key) if key else None)
    return BrokerUnavailable("the broker did not take the job; retry later")
