"""The built-in handler of HTTP jobTypes: deliver the job to the tenant's endpoint.

The generic task routes a job whose jobType no Python handler serves to its tenant's
HTTP registration (``pulse_core.http_handlers``), as a ``HandlerSpec`` whose function
POSTs ``{jobId, jobType, tenantId, attempt, payload, metadata}`` as JSON, signed
(Standard Webhooks), with a W3C ``traceparent``. Retries, time limits, dead letters
and execution limits are the generic task's, as for any handler.

Outcome by response (docs/http-handlers.md has the table):

- ``2xx``: succeeded; the JSON body (at most ``PULSE_RESULT_MAX_BYTES``) is the result;
- ``429``/``503``: retry after ``Retry-After`` (capped), else with backoff;
- ``408``, other ``5xx``, connection errors, time-outs: retry with backoff;
- other ``4xx`` (and ``3xx``: redirects are not followed): dead at once;
- a URL the SSRF guard refuses at delivery: dead at once, nothing sent.

The error records the last response's status and the first 1 KiB of its body. A
body is read no further than its cap, so a huge answer cannot fill the worker's memory.

One ``httpx.Client`` (a connection pool) per worker process, shared by its threads.
The client connects to the address the guard checked (the URL's host is sent as
``Host`` and as the TLS server name), so DNS cannot change the answer in between.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import secrets as random_secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from redis import Redis

from pulse_core import keys
from pulse_core.context import JobContext
from pulse_core.errors import AttemptHandedOff, PermanentError, RetryableError, RetryLater
from pulse_core.handlers import HandlerSpec
from pulse_core.http_handlers.attempts import TOKEN_TTL_SECONDS, AttemptTokens
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.http_handlers.guard import Target, UrlRefused, checked_address, parse_url
from pulse_core.http_handlers.registrations import RESERVED_HEADERS, Registration, Registrations
from pulse_core.http_handlers.signing import signature
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript
from pulse_core.telemetry import metrics, tracing

log = logging.getLogger("pulse.worker")

#: How much of a failed response's body the job's error keeps.
ERROR_BODY_BYTES = 1024
USER_AGENT = "Pulse-HTTP-Handler/1"
#: Connections kept per worker process (threads share them).
POOL_CONNECTIONS = 200

#: How long a worker process reuses a registration it read (a replace or rotation
#: reaches deliveries within this many seconds).
REGISTRATION_CACHE_SECONDS = 1.0

#: One round trip before a delivery, while the attempt is current: record the registration
#: version on the job and store the attempt token's digest (``AttemptTokens``).
_BEFORE_DELIVERY = LuaScript("pulse_core.http_handlers", "before_delivery", bool)


class _Failure:
    """What the job's error records about the last response (``describe_error`` adds it)."""

    error_fields: dict[str, Any]

    def _fields(self, status: int | None, body: bytes, response_class: str) -> None:
        self.error_fields = {"responseClass": response_class}
        if status is not None:
            self.error_fields["status"] = status
            self.error_fields["body"] = body[:ERROR_BODY_BYTES].decode("utf-8", errors="replace")


class DeliveryRefused(PermanentError, _Failure):
    """The SSRF guard refused where the URL leads now; nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._fields(None, b"", "refused")


class HttpPermanentFailure(PermanentError, _Failure):
    """A ``4xx`` (not 408/429) or ``3xx``: retrying would get the same answer."""

    def __init__(self, message: str, status: int | None, body: bytes, response_class: str) -> None:
        super().__init__(message)
        self._fields(status, body, response_class)


class HttpRetryable(RetryableError, _Failure):
    """``408``, ``5xx``, a connection error or a time-out: retried with backoff."""

    def __init__(self, message: str, status: int | None, body: bytes, response_class: str) -> None:
        super().__init__(message)
        self._fields(status, body, response_class)


class HttpRetryAfter(RetryLater, _Failure):
    """``429``/``503`` with ``Retry-After``: retried after that many seconds (capped)."""

    def __init__(self, seconds: float, message: str, status: int, body: bytes) -> None:
        super().__init__(seconds, message)
        self._fields(status, body, f"{status // 100}xx")


@dataclass
class _Answer:
    status: int
    body: bytes
    truncated: bool
    headers: httpx.Headers


def webhook_id(job: Job) -> str:
    """``<jobId>.<attempt>`` (``<jobId>.r<replays>.<attempt>`` after a replay): the same
    prefix on every attempt of a job, so a receiver can tell a retry from a new job."""
    middle = f".r{job.cycle}" if job.cycle else ""
    return f"{job.job_id}{middle}.{job.attempts}"


def traceparent(job: Job) -> str:
    """The W3C ``traceparent`` of the delivery: the attempt's span when tracing is on, else
    the job's trace id with a fresh span id, so the receiver joins the caller's trace."""
    if tracing.tracing_enabled():
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        inject(carrier)
        if "traceparent" in carrier:
            return carrier["traceparent"]
    trace_id = job.trace_id if len(job.trace_id) == 32 else random_secrets.token_hex(16)
    return f"00-{trace_id}-{random_secrets.token_hex(8)}-01"


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), at most ``cap``; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), cap)


class HttpDelivery:
    """Per worker: the registrations, the guard's settings and one pooled client per process."""

    def __init__(self, redis: Redis, settings: HttpHandlerSettings, *, result_max_bytes: int) -> None:
        self.settings = settings
        self.registrations = Registrations(redis, settings)
        self.tokens = AttemptTokens(redis)
        self._redis = redis
        self._before_delivery = _BEFORE_DELIVERY.register(redis)
        self._cache: dict[tuple[str, str], tuple[float, Registration | None]] = {}
        self._result_max_bytes = result_max_bytes
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_pid = 0

    def client(self) -> httpx.Client:
        """This process's pooled client (a prefork child makes its own after the fork)."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    self._client = httpx.Client(
                        follow_redirects=False,
                        trust_env=False,  # no proxy from the environment: the guard checked the address
                        limits=httpx.Limits(
                            max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS
                        ),
                    )
                    self._client_pid = pid
        return self._client

    def registration(self, tenant_id: str, job_type: str) -> Registration | None:
        """The tenant's registration of ``job_type`` (read at most once a second per process)."""
        now = time.monotonic()
        found = self._cache.get((tenant_id, job_type))
        if found is not None and found[0] > now:
            return found[1]
        registration = self.registrations.get(tenant_id, job_type)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(tenant_id, job_type)] = (now + REGISTRATION_CACHE_SECONDS, registration)
        return registration

    def handler(self, job: Job, registration: Registration) -> HandlerSpec:
        """``registration`` (the job's tenant's, of its jobType) as a handler delivering ``job``."""

        def deliver(payload: Mapping[str, Any], ctx: JobContext) -> Any:
            return self.deliver(job, registration)

        deliver.__qualname__ = f"http_delivery[{job.tenant_id}/{job.job_type} v{registration.version}]"
        return HandlerSpec(job.job_type, deliver, registration.policy, registration.limits)

    def deliver(self, job: Job, registration: Registration) -> Any:
        """One attempt: check, sign, POST, and turn the answer into a result or an error."""
        token, stored = self.tokens.new(job)
        current = self._before_delivery(
            keys=[keys.job(job.job_id), keys.http_attempt_token(job.job_id)],
            args=[str(job.attempts), str(registration.version), stored, TOKEN_TTL_SECONDS],
        )
        if not current:
            raise HttpRetryable("the attempt is no longer current; not delivered", None, b"", "stale")
        try:
            target = parse_url(registration.url, self.settings)
            address = checked_address(target, self.settings)
        except UrlRefused as exc:
            metrics.http_delivery(job.tenant_id, job.job_type, "refused")
            raise DeliveryRefused(f"delivery refused: {exc}") from None
        body = json.dumps(
            {
                "jobId": job.job_id,
                "jobType": job.job_type,
                "tenantId": job.tenant_id,
                "attempt": job.attempts,
                "payload": job.payload,
                "metadata": dict(job.metadata),
                # For a 202 answer: authenticates this attempt's heartbeat and complete calls.
                "attemptToken": token,
            },
            separators=(",", ":"),
        ).encode()
        msg_id = webhook_id(job)
        timestamp = int(time.time())
        headers = {name: value for name, value in registration.headers.items() if name.lower() not in RESERVED_HEADERS}
        default_port = 443 if target.scheme == "https" else 80
        headers.update(
            {
                "Host": target.host if target.port == default_port else f"{target.host}:{target.port}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(
                    self.registrations.signing_secrets(registration), msg_id, timestamp, body
                ),
                "traceparent": traceparent(job),
                "Pulse-Job-Id": job.job_id,
                "Pulse-Attempt": str(job.attempts),
                "Pulse-Handler-Version": str(registration.version),
            }
        )
        host = f"[{address}]" if address.version == 6 else str(address)
        url = f"{target.scheme}://{host}:{target.port}{target.path}"
        answer = self._post(job, target, url, headers, body, registration.timeout_seconds)
        if answer.status == 202:
            metrics.http_delivery(job.tenant_id, job.job_type, "2xx")
            if not self.tokens.hand_off(job, registration.timeout_seconds):
                raise HttpRetryable("the attempt was no longer current when 202 came", 202, answer.body, "2xx")
            raise AttemptHandedOff(f"202 accepted; the receiver reports within {registration.timeout_seconds} s")
        return self._outcome(job, answer)

    def _post(
        self, job: Job, target: Target, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> _Answer:
        deadline = time.monotonic() + timeout
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with self.client().stream(
                "POST", url, content=body, headers=headers, timeout=httpx.Timeout(timeout), extensions=extensions
            ) as response:
                ok = 200 <= response.status_code < 300
                cap = self._result_max_bytes if ok else ERROR_BODY_BYTES
                chunks: list[bytes] = []
                size = 0
                truncated = False
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        truncated = True
                        break
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the body was not read within timeoutSeconds")
                return _Answer(response.status_code, b"".join(chunks)[: cap + 1], truncated, response.headers)
        except httpx.TimeoutException as exc:
            metrics.http_delivery(job.tenant_id, job.job_type, "timeout")
            raise HttpRetryable(
                f"no answer within timeoutSeconds={timeout:g} ({type(exc).__name__})", None, b"", "timeout"
            ) from None
        except httpx.TransportError as exc:
            metrics.http_delivery(job.tenant_id, job.job_type, "connection")
            raise HttpRetryable(f"connection failed: {type(exc).__name__}: {exc}", None, b"", "connection") from None

    def _outcome(self, job: Job, answer: _Answer) -> Any:
        status = answer.status
        response_class = f"{status // 100}xx"
        metrics.http_delivery(job.tenant_id, job.job_type, response_class)
        if 200 <= status < 300:
            if answer.truncated:
                raise HttpPermanentFailure(
                    f"the receiver answered {status} with a body over the result cap of {self._result_max_bytes} bytes",
                    status,
                    answer.body,
                    response_class,
                )
            if not answer.body.strip():
                return None
            try:
                return json.loads(answer.body)
            except ValueError:
                return answer.body.decode("utf-8", errors="replace")
        if status in (429, 503):
            seconds = retry_after_seconds(answer.headers.get("Retry-After"), self.settings.retry_after_max_seconds)
            if seconds is not None:
                raise HttpRetryAfter(
                    seconds, f"the receiver answered {status}; retry in {seconds:g} s", status, answer.body
                )
            raise HttpRetryable(f"the receiver answered {status}", status, answer.body, response_class)
        if status == 408 or status >= 500:
            raise HttpRetryable(f"the receiver answered {status}", status, answer.body, response_class)
        if 300 <= status < 400:
            where = answer.headers.get("Location", "")
            raise HttpPermanentFailure(
                f"the receiver answered {status} (redirects are not followed; Location: {where[:200]})",
                status,
                answer.body,
                response_class,
            )
        raise HttpPermanentFailure(
            f"the receiver answered {status}: a permanent failure", status, answer.body, response_class
        )
