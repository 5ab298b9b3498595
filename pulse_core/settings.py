"""Process settings, read once from ``PULSE_*`` environment variables and validated.

A bad value raises ``ConfigError`` naming the variable, so start-up stops with a
message that says what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from pulse_core.errors import ConfigError

_N = TypeVar("_N", int, float)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "pulse"
DEFAULT_RESULT_MAX_BYTES = 64 * 1024
DEFAULT_JOB_TYPE_TTL_SECONDS = 30
#: How long an idempotency key remembers its job.
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: Most jobs one ``POST /v1/batches`` may carry.
DEFAULT_BATCH_MAX_JOBS = 500
#: Largest ``POST /v1/batches`` body, in bytes (each job is also held to its tenant's cap).
DEFAULT_BATCH_MAX_BYTES = 16 * 1024 * 1024
#: A running attempt's lease: refreshed by its worker every third of this; once it
#: lapses the attempt counts as crashed and the job is recovered.
DEFAULT_LEASE_SECONDS = 30.0
#: How often a worker looks for jobs whose lease lapsed or whose due time passed.
DEFAULT_SWEEP_INTERVAL_SECONDS = 10.0
#: A queued job not claimed this long after it was queued is looked at by the sweep: its
#: message is republished if it was lost (then after twice as long, and so on, up to an hour).
DEFAULT_QUEUED_CHECK_SECONDS = 60.0
#: Operator caps on per-job options (``options.maxRetries``, ``options.timeoutSeconds``).
DEFAULT_MAX_RETRIES_CAP = 20
DEFAULT_TIMEOUT_CAP_SECONDS = 900
#: The latest a job may be scheduled (``options.delaySeconds`` / ``options.runAt``).
DEFAULT_MAX_DELAY_SECONDS = 30 * 24 * 3600
#: Delays up to this travel as Celery ETA messages; longer ones wait in Redis and are
#: published by the sweep when due (so no message is held unacked for long).
DEFAULT_ETA_WINDOW_SECONDS = 300
#: The Redis broker redelivers a message not acked within this (kombu's visibility_timeout).
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
#: On SIGTERM, how long running jobs may take to finish before they are cancelled and requeued.
DEFAULT_SOFT_SHUTDOWN_SECONDS = 30.0
DEFAULT_LOG_FORMAT = "json"
LOG_FORMATS = ("json", "text")
DEFAULT_WORKER_METRICS_HOST = "127.0.0.1"

_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_BROKER_SCHEMES = _REDIS_SCHEMES | {"amqp", "amqps", "pyamqp"}
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a Pulse process needs to know about its environment."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    tenants_file: Path | None = None
    handler_modules: tuple[str, ...] = ()
    default_queue: str = DEFAULT_QUEUE
    result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES
    job_type_ttl_seconds: int = DEFAULT_JOB_TYPE_TTL_SECONDS
    idempotency_ttl_seconds: int = DEFAULT_IDEMPOTENCY_TTL_SECONDS
    batch_max_jobs: int = DEFAULT_BATCH_MAX_JOBS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    queued_check_seconds: float = DEFAULT_QUEUED_CHECK_SECONDS
    max_retries_cap: int = DEFAULT_MAX_RETRIES_CAP
    timeout_cap_seconds: int = DEFAULT_TIMEOUT_CAP_SECONDS
    max_delay_seconds: int = DEFAULT_MAX_DELAY_SECONDS
    eta_window_seconds: int = DEFAULT_ETA_WINDOW_SECONDS
    visibility_timeout_seconds: int = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    soft_shutdown_seconds: float = DEFAULT_SOFT_SHUTDOWN_SECONDS
    #: ``json`` (one object per line) or ``text``.
    log_format: str = DEFAULT_LOG_FORMAT
    #: Port of a worker's Prometheus endpoint; ``None``: the worker serves no metrics.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = DEFAULT_WORKER_METRICS_HOST
    #: ``PULSE_METRICS=off``: record no Prometheus metrics at all.
    metrics_enabled: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``PULSE_*`` variables; raise ``ConfigError`` on a bad one."""
        redis_url = env.get("PULSE_REDIS_URL") or DEFAULT_REDIS_URL
        _check_url("PULSE_REDIS_URL", redis_url, _REDIS_SCHEMES)
        broker_url = env.get("PULSE_BROKER_URL") or redis_url
        _check_url("PULSE_BROKER_URL", broker_url, _BROKER_SCHEMES)
        tenants = env.get("PULSE_TENANTS_FILE")
        return cls(
            redis_url=redis_url,
            broker_url=broker_url,
            tenants_file=Path(tenants) if tenants else None,
            handler_modules=_modules("PULSE_HANDLER_MODULES", env.get("PULSE_HANDLER_MODULES")),
            default_queue=_name("PULSE_DEFAULT_QUEUE", env.get("PULSE_DEFAULT_QUEUE")) or DEFAULT_QUEUE,
            result_max_bytes=_positive_int(
                "PULSE_RESULT_MAX_BYTES",
                env.get("PULSE_RESULT_MAX_BYTES"),
                DEFAULT_RESULT_MAX_BYTES,
            ),
            job_type_ttl_seconds=_positive_int(
                "PULSE_JOB_TYPE_TTL_SECONDS",
                env.get("PULSE_JOB_TYPE_TTL_SECONDS"),
                DEFAULT_JOB_TYPE_TTL_SECONDS,
            ),
            idempotency_ttl_seconds=_positive_int(
                "PULSE_IDEMPOTENCY_TTL_SECONDS",
                env.get("PULSE_IDEMPOTENCY_TTL_SECONDS"),
                DEFAULT_IDEMPOTENCY_TTL_SECONDS,
            ),
            batch_max_jobs=_positive_int(
                "PULSE_BATCH_MAX_JOBS", env.get("PULSE_BATCH_MAX_JOBS"), DEFAULT_BATCH_MAX_JOBS
            ),
            batch_max_bytes=_positive_int(
                "PULSE_BATCH_MAX_BYTES", env.get("PULSE_BATCH_MAX_BYTES"), DEFAULT_BATCH_MAX_BYTES
            ),
            lease_seconds=_positive_float("PULSE_LEASE_SECONDS", env.get("PULSE_LEASE_SECONDS"), DEFAULT_LEASE_SECONDS),
            sweep_interval_seconds=_positive_float(
                "PULSE_SWEEP_INTERVAL_SECONDS",
                env.get("PULSE_SWEEP_INTERVAL_SECONDS"),
                DEFAULT_SWEEP_INTERVAL_SECONDS,
            ),
            queued_check_seconds=_positive_float(
                "PULSE_QUEUED_CHECK_SECONDS",
                env.get("PULSE_QUEUED_CHECK_SECONDS"),
                DEFAULT_QUEUED_CHECK_SECONDS,
            ),
            max_retries_cap=_positive_int(
                "PULSE_MAX_RETRIES_CAP", env.get("PULSE_MAX_RETRIES_CAP"), DEFAULT_MAX_RETRIES_CAP
            ),
            timeout_cap_seconds=_positive_int(
                "PULSE_TIMEOUT_CAP_SECONDS",
                env.get("PULSE_TIMEOUT_CAP_SECONDS"),
                DEFAULT_TIMEOUT_CAP_SECONDS,
            ),
            max_delay_seconds=_positive_int(
                "PULSE_MAX_DELAY_SECONDS",
                env.get("PULSE_MAX_DELAY_SECONDS"),
                DEFAULT_MAX_DELAY_SECONDS,
            ),
            eta_window_seconds=_positive_int(
                "PULSE_ETA_WINDOW_SECONDS",
                env.get("PULSE_ETA_WINDOW_SECONDS"),
                DEFAULT_ETA_WINDOW_SECONDS,
            ),
            visibility_timeout_seconds=_positive_int(
                "PULSE_VISIBILITY_TIMEOUT_SECONDS",
                env.get("PULSE_VISIBILITY_TIMEOUT_SECONDS"),
                DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
            ),
            soft_shutdown_seconds=_positive_float(
                "PULSE_SOFT_SHUTDOWN_SECONDS",
                env.get("PULSE_SOFT_SHUTDOWN_SECONDS"),
                DEFAULT_SOFT_SHUTDOWN_SECONDS,
            ),
            log_format=_choice("PULSE_LOG_FORMAT", env.get("PULSE_LOG_FORMAT"), LOG_FORMATS) or DEFAULT_LOG_FORMAT,
            worker_metrics_port=_port("PULSE_WORKER_METRICS_PORT", env.get("PULSE_WORKER_METRICS_PORT")),
            worker_metrics_host=env.get("PULSE_WORKER_METRICS_HOST") or DEFAULT_WORKER_METRICS_HOST,
        )

    def require_tenants_file(self) -> Path:
        """The tenants file path, or a ``ConfigError`` that says how to set it."""
        if self.tenants_file is None:
            raise ConfigError(
                "PULSE_TENANTS_FILE is not set: point it at a tenants TOML file "
                "(deploy/tenants.dev.toml is a working example)"
            )
        return self.tenants_file


def _check_url(name: str, value: str, schemes: set[str]) -> None:
    scheme = urlparse(value).scheme
    if scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ConfigError(f"{name}={value!r} is not a URL with one of the schemes: {allowed}")


def _modules(name: str, value: str | None) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in (value or "").split(",") if part.strip())
    for module in modules:
        if not _MODULE_RE.match(module):
            raise ConfigError(f"{name}: {module!r} is not a Python module path")
    return modules


def _name(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", value):
        raise ConfigError(f"{name}={value!r}: use letters, digits, '_', '.' or '-'")
    return value


def _positive_int(name: str, value: str | None, default: int) -> int:
    return _positive(name, value, default, int, "a whole number")


def _positive_float(name: str, value: str | None, default: float) -> float:
    return _positive(name, value, default, float, "a number")


def _positive(name: str, value: str | None, default: _N, parse: Callable[[str], _N], noun: str) -> _N:
    """``value`` parsed, finite and greater than zero; ``default`` when unset."""
    if value is None or value == "":
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not {noun}") from None
    if not 0 < number < math.inf:
        raise ConfigError(f"{name}={value!r} must be a finite number greater than zero")
    return number


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: use one of {', '.join(allowed)}")
    return value


def _port(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    number = _positive_int(name, value, 0)
    if number > 65535:
        raise ConfigError(f"{name}={value!r} is not a TCP port (1-65535)")
    return number
