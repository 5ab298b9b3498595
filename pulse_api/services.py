"""What the API process holds, built once by ``create_app`` and passed to the views."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from pulse_core.broker.celery_app import create_celery, declare_run_job, dispatcher, publishes_inline
from pulse_core.guards.admission import Admission
from pulse_core.guards.execution_limits import ExecutionGate
from pulse_core.http_handlers.attempts import AttemptTokens
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.http_handlers.registrations import Registrations
from pulse_core.policy import RetryPolicy
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.dead_letters import DeadLetters
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import JobTypeDirectory
from pulse_core.submission.submit import Submitter
from pulse_core.tenants import TenantsSource

EXTENSION_KEY = "pulse"


@dataclass(frozen=True)
class Services:
    settings: Settings
    #: The tenants config in force: re-read when the file changes (``config``).
    tenants: TenantsSource
    redis: Redis
    store: JobStore
    celery: Celery
    job_types: JobTypeDirectory
    admission: Admission
    #: Jobs are pushed by the admission script (the broker is the job store's Redis).
    inline_publish: bool
    dead_letters: DeadLetters
    #: The submit use case (``pulse_core.submission``), called once per request.
    submitter: Submitter
    #: Tenants' HTTP handlers (``pulse_core.http_handlers``) and the operator's settings for them.
    http_settings: HttpHandlerSettings
    registrations: Registrations
    attempt_tokens: AttemptTokens
    #: Parks the next attempt of an HTTP handler's job that reported a retryable error until
    #: it is due (``pulse_core.guards.execution_limits``), as a worker parks its retries.
    parking: ExecutionGate

    @classmethod
    def build(
        cls, settings: Settings, tenants: TenantsSource, http_settings: HttpHandlerSettings | None = None
    ) -> Services:
        redis = connect(settings.redis_url)
        http_settings = http_settings or HttpHandlerSettings()
        registrations = Registrations(redis, http_settings)
        registrations.require_key_if_used()

        def http_job_type(tenant_id: str, job_type: str) -> RetryPolicy | None:
            found = registrations.get(tenant_id, job_type)
            return found.policy if found is not None else None

        fair = dispatcher(settings, redis)
        store = JobStore(redis, dispatcher=fair)
        celery = create_celery(settings, main="pulse-api")
        declare_run_job(celery)
        job_types = JobTypeDirectory(redis)
        admission = Admission(redis, idempotency_ttl_seconds=settings.idempotency_ttl_seconds, dispatcher=fair)
        inline_publish = publishes_inline(settings)
        return cls(
            settings=settings,
            tenants=tenants,
            redis=redis,
            store=store,
            celery=celery,
            job_types=job_types,
            admission=admission,
            inline_publish=inline_publish,
            dead_letters=DeadLetters(redis, store),
            submitter=Submitter(
                settings=settings,
                tenants=tenants,
                store=store,
                celery=celery,
                job_types=job_types,
                admission=admission,
                inline_publish=inline_publish,
                http_job_type=http_job_type,
            ),
            http_settings=http_settings,
            registrations=registrations,
            attempt_tokens=AttemptTokens(redis),
            parking=ExecutionGate(
                redis, grace_seconds=settings.lease_seconds, check_seconds=settings.queued_check_seconds
            ),
        )


def services() -> Services:
    """The current app's services."""
    found: Services = current_app.extensions[EXTENSION_KEY]
    return found
