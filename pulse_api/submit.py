"""Admitting one job: check it, record it, publish it — or leave nothing behind."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_api.options import resolve
from pulse_api.services import Services
from pulse_core.celery_setup import publish_job
from pulse_core.errors import BrokerUnavailable, TenantMismatch, UnknownJobType
from pulse_core.jobs import Job, JobState, new_job_id, new_trace_id, utc_now
from pulse_core.tenants import Tenant

log = logging.getLogger("pulse.api")


def submit_job(svc: Services, tenant: Tenant, body: Mapping[str, Any]) -> Job:
    """Validate ``body`` for ``tenant``, store the job and publish it."""
    claimed_tenant = body.get("tenantId")
    if claimed_tenant is not None and claimed_tenant != tenant.tenant_id:
        raise TenantMismatch("tenantId must be the API key's own tenant (or be left out)")
    job_type = body["jobType"]
    if not svc.job_types.is_live(job_type):
        raise UnknownJobType(job_type)
    options = resolve(svc.settings, svc.job_types.policy(job_type), body.get("options") or {})
    metadata = dict(body.get("metadata") or {})
    job = Job(
        job_id=new_job_id(),
        tenant_id=tenant.tenant_id,
        job_type=job_type,
        queue=svc.settings.default_queue,
        payload=body["payload"],
        metadata=metadata,
        trace_id=metadata.get("traceId") or new_trace_id(),
        created_at=utc_now(),
        state=JobState.QUEUED if options.due_at is None else JobState.SCHEDULED,
        max_retries=options.max_retries,
        timeout_seconds=options.timeout_seconds,
        due_at=options.due_at,
    )
    svc.store.create(job, watch_at=options.watch_at)
    if options.due_at is not None and options.countdown is None:
        return job  # due beyond the ETA window: the workers' sweep publishes it when due
    try:
        publish_job(svc.celery, job, countdown=options.countdown)
    except (KombuError, OSError, RedisError) as exc:
        log.warning("publish of job %s failed, record discarded: %s", job.job_id, exc)
        svc.store.discard(job)
        raise BrokerUnavailable("the broker did not take the job; retry later") from exc
    return job
