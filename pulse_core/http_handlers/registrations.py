"""HTTP handler registrations in Redis: one hash per tenant, jobType -> JSON record.

The signing secret is encrypted at rest with the operator's ``PULSE_SECRET_KEY``
(Fernet) and shown to the tenant only when it is made (on create and on rotation).
A rotation keeps the previous secret valid for a grace period: deliveries are signed
with both until it ends. Each create or replace bumps the record's ``version``; a job
records the version it was delivered with.

A tenant has at most ``MAX_PER_TENANT`` registrations (bounded state).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from pulse_core import keys
from pulse_core.errors import ConfigError, InvalidParameter
from pulse_core.http_handlers.config import SECRET_KEY_ENV, HttpHandlerSettings
from pulse_core.http_handlers.signing import new_secret
from pulse_core.jobs import utc_now
from pulse_core.policy import ExecutionLimits, RetryPolicy
from pulse_core.redis_client import redis_now

log = logging.getLogger("pulse")

MAX_PER_TENANT = 100
DEFAULT_TIMEOUT_SECONDS = 30
MAX_TIMEOUT_SECONDS = 900
DEFAULT_ROTATION_GRACE_SECONDS = 24 * 3600
MAX_ROTATION_GRACE_SECONDS = 7 * 24 * 3600
#: Most deliveries one window of a registration's ``rateLimit`` may allow: the execution
#: gate keeps one entry per start in each window (``guards/lua/rate_acquire.lua``), so this
#: bounds what a tenant's limits hold in Redis (``MAX_PER_TENANT`` registrations of them).
MAX_RATE_LIMIT_PER_WINDOW = 10_000


#: Headers Pulse sets on a delivery itself: a registration's static headers may not name
#: them (the API refuses them; the worker drops them from older registrations too).
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "user-agent",
        "traceparent",
        "tracestate",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "pulse-job-id",
        "pulse-attempt",
        "pulse-handler-version",
    }
)


@dataclass(frozen=True, kw_only=True)
class Registration:
    """One tenant's endpoint for one of its jobTypes (secrets encrypted)."""

    tenant_id: str
    job_type: str
    url: str
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    max_retries: int | None = None
    backoff: float | None = None
    max_concurrency: int | None = None
    rate_limit: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    version: int = 1
    created_at: str = ""
    updated_at: str = ""
    secret: str = ""  # encrypted
    previous_secret: str | None = None  # encrypted
    previous_secret_until: float | None = None

    @property
    def policy(self) -> RetryPolicy:
        given: dict[str, Any] = {"timeout": self.timeout_seconds}
        if self.max_retries is not None:
            given["max_retries"] = self.max_retries
        if self.backoff is not None:
            given["backoff"] = self.backoff
        return RetryPolicy(**given)

    @property
    def limits(self) -> ExecutionLimits:
        return ExecutionLimits(rate_limit=self.rate_limit, max_concurrency=self.max_concurrency)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Registration:
        return cls(**json.loads(text))

    def document(self) -> dict[str, Any]:
        """What the API shows: never a secret, never a static header's value."""
        return {
            "jobType": self.job_type,
            "url": self.url,
            "timeoutSeconds": self.timeout_seconds,
            "maxRetries": self.policy.max_retries,
            "backoff": self.policy.backoff,
            "maxConcurrency": self.max_concurrency,
            "rateLimit": self.rate_limit,
            "headers": {name: "<redacted>" for name in self.headers},
            "version": self.version,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "previousSecretValidUntil": _iso(self.previous_secret_until),
        }


def _iso(epoch: float | None) -> str | None:
    if epoch is None or epoch < time.time():
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SecretBox:
    """Fernet encryption of signing secrets under ``PULSE_SECRET_KEY``."""

    def __init__(self, key: str | None) -> None:
        self._key = key
        self._opened: dict[str, str] = {}  # sealed -> secret, so a worker decrypts each once

    @property
    def ready(self) -> bool:
        return self._key is not None

    def _fernet(self) -> Any:
        if self._key is None:
            raise ConfigError(f"{SECRET_KEY_ENV} is not set: HTTP handlers need it to keep signing secrets")
        from cryptography.fernet import Fernet

        return Fernet(self._key.encode())

    def seal(self, secret: str) -> str:
        return str(self._fernet().encrypt(secret.encode()).decode())

    def open(self, sealed: str) -> str:
        from cryptography.fernet import InvalidToken

        known = self._opened.get(sealed)
        if known is not None:
            return known
        try:
            secret = str(self._fernet().decrypt(sealed.encode()).decode())
            if len(self._opened) > 10_000:
                self._opened.clear()
            self._opened[sealed] = secret
            return secret
        except InvalidToken:
            raise ConfigError(
                f"a signing secret does not decrypt with {SECRET_KEY_ENV}: was the key changed?"
            ) from None


class Registrations:
    """Read and write registrations; every write is one optimistic transaction."""

    def __init__(self, redis: Redis, settings: HttpHandlerSettings) -> None:
        self._redis = redis
        self.box = SecretBox(settings.secret_key)

    def any_exist(self) -> bool:
        return bool(self._redis.scard(keys.HTTP_HANDLER_TENANTS))

    def get(self, tenant_id: str, job_type: str) -> Registration | None:
        raw = self._redis.hget(keys.http_handlers(tenant_id), job_type)
        return Registration.from_json(str(raw)) if raw else None

    def all(self, tenant_id: str) -> list[Registration]:
        raw: dict[str, str] = self._redis.hgetall(keys.http_handlers(tenant_id))  # type: ignore[assignment]
        return [Registration.from_json(raw[name]) for name in sorted(raw)]

    def put(self, wanted: Registration) -> tuple[Registration, str | None]:
        """Create or replace; return the stored record and, on create, the new secret."""
        key = keys.http_handlers(wanted.tenant_id)
        secret = new_secret()
        sealed = self.box.seal(secret)  # before the transaction: a missing key stores nothing
        outcome: dict[str, Any] = {}

        def write(pipe: Pipeline) -> None:
            raw = pipe.hget(key, wanted.job_type)
            now = utc_now()
            if raw:
                old = Registration.from_json(str(raw))
                record = replace(
                    wanted,
                    version=old.version + 1,
                    created_at=old.created_at,
                    updated_at=now,
                    secret=old.secret,
                    previous_secret=old.previous_secret,
                    previous_secret_until=old.previous_secret_until,
                )
                outcome["secret"] = None
            else:
                if int(pipe.hlen(key)) >= MAX_PER_TENANT:  # type: ignore[arg-type]
                    raise InvalidParameter(
                        "jobType", f"a tenant may register at most {MAX_PER_TENANT} HTTP handlers; delete one first"
                    )
                record = replace(wanted, version=1, created_at=now, updated_at=now, secret=sealed)
                outcome["secret"] = secret
            pipe.multi()
            pipe.hset(key, wanted.job_type, record.to_json())
            pipe.sadd(keys.HTTP_HANDLER_TENANTS, wanted.tenant_id)
            outcome["record"] = record

        self._redis.transaction(write, key)
        return outcome["record"], outcome["secret"]

    def delete(self, tenant_id: str, job_type: str) -> bool:
        key = keys.http_handlers(tenant_id)
        outcome = {"deleted": False}

        def write(pipe: Pipeline) -> None:
            exists = pipe.hexists(key, job_type)
            remaining = int(pipe.hlen(key)) - (1 if exists else 0)  # type: ignore[arg-type]
            pipe.multi()
            pipe.hdel(key, job_type)
            if remaining <= 0:
                pipe.srem(keys.HTTP_HANDLER_TENANTS, tenant_id)
            outcome["deleted"] = bool(exists)

        self._redis.transaction(write, key)
        return outcome["deleted"]

    def rotate(self, tenant_id: str, job_type: str, grace_seconds: float) -> tuple[Registration, str] | None:
        """A new secret; the current one stays valid for ``grace_seconds``."""
        key = keys.http_handlers(tenant_id)
        secret = new_secret()
        sealed = self.box.seal(secret)
        outcome: dict[str, Registration | None] = {"record": None}

        def write(pipe: Pipeline) -> None:
            raw = pipe.hget(key, job_type)
            if not raw:
                pipe.multi()
                outcome["record"] = None
                return
            old = Registration.from_json(str(raw))
            record = replace(
                old,
                secret=sealed,
                previous_secret=old.secret if grace_seconds > 0 else None,
                previous_secret_until=redis_now(self._redis) + grace_seconds if grace_seconds > 0 else None,
                updated_at=utc_now(),
            )
            pipe.multi()
            pipe.hset(key, job_type, record.to_json())
            outcome["record"] = record

        self._redis.transaction(write, key)
        found = outcome["record"]
        return (found, secret) if found is not None else None

    def signing_secrets(self, registration: Registration, now: float | None = None) -> list[str]:
        """The secrets a delivery is signed with: the current one, and the previous one
        while its grace period runs (on Redis' clock, as the rotation that started it)."""
        found = [self.box.open(registration.secret)]
        until = registration.previous_secret_until
        if registration.previous_secret and until is not None and until > (now or redis_now(self._redis)):
            found.append(self.box.open(registration.previous_secret))
        return found

    def require_key_if_used(self) -> None:
        """Start-up check: once any HTTP handler exists, ``PULSE_SECRET_KEY`` must be set.

        With Redis unreachable the check is skipped (a process must start, and say it is
        not ready, while Redis is down); a delivery without the key fails loudly anyway.
        """
        if self.box.ready:
            return
        try:
            used = self.any_exist()
        except RedisError as exc:
            log.warning("could not check for HTTP handler registrations (%s): %s not checked", exc, SECRET_KEY_ENV)
            return
        if used:
            raise ConfigError(
                f"{SECRET_KEY_ENV} is not set, but HTTP handlers are registered: set it to the Fernet key "
                "their signing secrets were encrypted with"
            )
