"""What a worker process holds: its settings, Redis client, job store and handlers."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from pulse_core.guards.execution_limits import ExecutionGate
from pulse_core.handlers import HandlerRegistry
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.tenants import TenantsConfig, TenantsSource
from pulse_worker.http_delivery import HttpDelivery


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
            store=JobStore(redis),
            registry=registry,
            gate=ExecutionGate(redis, grace_seconds=settings.lease_seconds),
            tenants=tenants,
            http=HttpDelivery(
                redis, http_settings or HttpHandlerSettings(), result_max_bytes=settings.result_max_bytes
            ),
        )

    def tenants_config(self) -> TenantsConfig | None:
        return self.tenants.config if self.tenants is not None else None
