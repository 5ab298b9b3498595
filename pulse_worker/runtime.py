"""What a worker process holds: its settings, Redis client, job store and handlers."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from redis import Redis

from pulse_core.broker.celery_app import dispatcher
from pulse_core.guards.execution_limits import ExecutionGate
from pulse_core.handlers import HandlerRegistry
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import DeadLetterBounds, JobStore
from pulse_core.tenants import DEFAULT_MAX_STORED_BYTES, TenantsConfig, TenantsSource
from pulse_worker.http_delivery import HttpDelivery


def unique_worker_name() -> str:
    """A Celery node name no other worker has: ``pulse-<pid>-<random>@<host>``."""
    return f"pulse-{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"


def lease_owner(worker_name: str, task_id: str | None) -> str:
    """Who holds a running attempt's lease: this worker's (unique) name and the task id of
    the message that started the attempt. The claim writes it and the guardian renews only
    leases whose owner it computes the same way, so a worker never renews an attempt it
    did not claim, even another worker's of the same name."""
    return f"{worker_name}/{task_id or '-'}"


@dataclass(frozen=True)
class WorkerRuntime:
    """Passed to the task and the bootsteps; built once per worker app."""

    settings: Settings
    redis: Redis
    store: JobStore
    registry: HandlerRegistry
    gate: ExecutionGate
    #: The tenants file (``PULSE_TENANTS_FILE``), re-read when it changes: execution
    #: limit overrides and the shared queue's name. ``None`` when not set.
    tenants: TenantsSource | None = None
    #: Delivers the jobs of tenants' HTTP jobTypes (``pulse_worker.http_delivery``).
    http: HttpDelivery | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: HandlerRegistry,
        tenants: TenantsSource | None = None,
        http_settings: HttpHandlerSettings | None = None,
    ) -> WorkerRuntime:
        redis = connect(settings.redis_url)
        return cls(
            settings=settings,
            redis=redis,
            store=JobStore(redis, dispatcher=dispatcher(settings, redis)),
            registry=registry,
            gate=ExecutionGate(
                redis, grace_seconds=settings.lease_seconds, check_seconds=settings.queued_check_seconds
            ),
            tenants=tenants,
            http=HttpDelivery(
                redis, http_settings or HttpHandlerSettings(), result_max_bytes=settings.result_max_bytes
            ),
        )

    def tenants_config(self) -> TenantsConfig | None:
        return self.tenants.config if self.tenants is not None else None

    def dead_letter_bounds(self, tenant_id: str) -> DeadLetterBounds:
        """The tenant's ``max_dead_letters`` and ``dead_letter_days`` (defaults without a tenants file)."""
        config = self.tenants_config()
        tenant = config.tenants.get(tenant_id) if config is not None else None
        if tenant is None:
            return DeadLetterBounds()
        return DeadLetterBounds(most=tenant.max_dead_letters, days=tenant.dead_letter_days)

    def stored_bytes_budget(self, tenant_id: str) -> int:
        """The tenant's ``max_stored_bytes``, which its results must fit in (the default
        without a tenants file)."""
        config = self.tenants_config()
        tenant = config.tenants.get(tenant_id) if config is not None else None
        return tenant.max_stored_bytes if tenant is not None else DEFAULT_MAX_STORED_BYTES
