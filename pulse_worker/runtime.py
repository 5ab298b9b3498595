"""What a worker process holds: its settings, Redis client, job store and handlers."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from pulse_core.handlers import HandlerRegistry
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store import JobStore


@dataclass(frozen=True)
class WorkerRuntime:
    """Passed to the task and the bootsteps; built once per worker app."""

    settings: Settings
    redis: Redis
    store: JobStore
    registry: HandlerRegistry

    @classmethod
    def build(cls, settings: Settings, registry: HandlerRegistry) -> WorkerRuntime:
        redis = connect(settings.redis_url)
        return cls(settings=settings, redis=redis, store=JobStore(redis), registry=registry)
