"""The handler registry: plain functions registered under a jobType.

    from pulse_core.handlers import handler

    @handler("email.send", max_retries=5, backoff=2, backoff_max=300, timeout=30)
    def send(payload, ctx):
        ...
        return {"sent": True}

Retry and timeout arguments are optional; ``pulse_core.policy`` documents the
defaults and how per-job options override them. ``rate_limit`` and
``max_concurrency`` hold across every worker (``pulse_core.guards.execution_limits``).

Workers import the modules named in ``PULSE_HANDLER_MODULES`` and those of the
``pulse.handlers`` entry-point group; importing a module runs its decorators.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pulse_core.context import JobContext
from pulse_core.errors import ConfigError, DuplicateHandler
from pulse_core.policy import ExecutionLimits, RetryPolicy

HandlerFn = Callable[[Mapping[str, Any], JobContext], Any]
ENTRY_POINT_GROUP = "pulse.handlers"
JOB_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler and where it came from."""

    job_type: str
    fn: HandlerFn
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    limits: ExecutionLimits = field(default_factory=ExecutionLimits)

    @property
    def origin(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


class HandlerRegistry:
    """jobType -> handler. Registering a jobType twice is an error."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def handler(
        self,
        job_type: str,
        *,
        max_retries: int | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        timeout: int | None = None,
        rate_limit: str | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator registering ``fn(payload, ctx)`` as the handler of ``job_type``.

        ``max_retries``, ``backoff``, ``backoff_max`` and ``timeout`` set the jobType's
        retry policy; each left out keeps its ``pulse_core.policy.DEFAULT_*`` value.
        ``rate_limit`` ("10/second") and ``max_concurrency`` limit its runs across
        every worker (the tenants file may override them).
        """
        if not JOB_TYPE_RE.fullmatch(job_type):
            raise ConfigError(f"jobType {job_type!r} is not valid: use 1-128 of letters, digits, '_.:-'")
        given: dict[str, Any] = {
            "max_retries": max_retries,
            "backoff": backoff,
            "backoff_max": backoff_max,
            "timeout": timeout,
        }
        try:
            policy = RetryPolicy(**{k: v for k, v in given.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"jobType {job_type!r}: bad retry policy: {exc}") from None
        try:
            limits = ExecutionLimits(rate_limit=rate_limit, max_concurrency=max_concurrency)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"jobType {job_type!r}: bad execution limit: {exc}") from None

        def register(fn: HandlerFn) -> HandlerFn:
            spec = HandlerSpec(job_type, fn, policy, limits)
            existing = self._specs.get(job_type)
            if existing is not None and existing.fn is not fn:
                raise DuplicateHandler(
                    f"a handler for jobType {job_type!r} is already registered "
                    f"({existing.origin}); {spec.origin} cannot register it again"
                )
            self._specs[job_type] = spec
            return fn

        return register

    def get(self, job_type: str) -> HandlerSpec | None:
        """The handler of ``job_type``, or ``None``."""
        return self._specs.get(job_type)

    def job_types(self) -> frozenset[str]:
        """Every registered jobType."""
        return frozenset(self._specs)

    def policies(self) -> dict[str, RetryPolicy]:
        """jobType -> its declared retry policy."""
        return {job_type: spec.policy for job_type, spec in self._specs.items()}

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(list(self._specs.values()))


#: The process-wide registry that ``@handler`` writes to (as Dramatiq's actors do).
registry = HandlerRegistry()
handler = registry.handler


def load_handler_modules(modules: Iterable[str]) -> list[str]:
    """Import handler modules by name and from the entry-point group; return what was loaded."""
    loaded: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"PULSE_HANDLER_MODULES: cannot import {name!r}: {exc}") from exc
        except ConfigError:
            raise  # a registration the module made is refused (a duplicate jobType, ...)
        except Exception as exc:
            # Any other failure too: Celery's worker_init swallows it, and the worker would
            # run on without this module's handlers and with its start-up checks skipped.
            raise ConfigError(f"PULSE_HANDLER_MODULES: cannot import {name!r}: {type(exc).__name__}: {exc}") from exc
        loaded.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except ConfigError:
            raise
        except Exception as exc:  # ImportError or any other failure, as above
            raise ConfigError(
                f"entry point {point.name!r} in group {ENTRY_POINT_GROUP!r} cannot be loaded: {exc}"
            ) from exc
        loaded.append(point.value)
    return loaded
