"""Process settings, read once from ``PULSE_*`` environment variables and validated.

A bad value raises ``ConfigError`` naming the variable, so start-up stops with a
message that says what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pulse_core.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "pulse"
DEFAULT_RESULT_MAX_BYTES = 64 * 1024
DEFAULT_JOB_TYPE_TTL_SECONDS = 30
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
            default_queue=_name("PULSE_DEFAULT_QUEUE", env.get("PULSE_DEFAULT_QUEUE"))
            or DEFAULT_QUEUE,
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
            log_format=_choice("PULSE_LOG_FORMAT", env.get("PULSE_LOG_FORMAT"), LOG_FORMATS)
            or DEFAULT_LOG_FORMAT,
            worker_metrics_port=_port(
                "PULSE_WORKER_METRICS_PORT", env.get("PULSE_WORKER_METRICS_PORT")
            ),
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
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
    if number <= 0:
        raise ConfigError(f"{name}={value!r} must be greater than zero")
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
