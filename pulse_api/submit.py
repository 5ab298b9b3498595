"""Admitting one job: check it, record it, publish it — or leave nothing behind."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_api.services import Services
from pulse_core import logs, metrics, telemetry
from pulse_core.celery_setup import publish_job
from pulse_core.errors import BrokerUnavailable, TenantMismatch, UnknownJobType
from pulse_core.jobs import Job, new_job_id, utc_now
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
    metadata = dict(body.get("metadata") or {})
    job = Job(
        job_id=new_job_id(),
        tenant_id=tenant.tenant_id,
        job_type=job_type,
        queue=svc.settings.default_queue,
        payload=body["payload"],
        metadata=metadata,
        trace_id=telemetry.job_trace_id(metadata.get("traceId")),
        created_at=utc_now(),
    )
    logs.bind_job(job)
    svc.store.create(job)
    try:
        publish_job(svc.celery, job)
    except (KombuError, OSError, RedisError) as exc:
        log.warning("publish of job %s failed, record discarded: %s", job.job_id, exc)
        svc.store.discard(job)
        raise BrokerUnavailable("the broker did not take the job; retry later") from exc
    metrics.job_submitted(job.tenant_id, job.job_type)
    log.info("job accepted")
    return job
