"""``/v1/handlers``: a tenant registers an HTTP endpoint as the handler of a jobType of its own.

Workers deliver each job of that jobType to the endpoint as a signed request
(``pulse_worker.http_delivery``; docs/http-handlers.md). The signing secret is shown
once, in the answer that made it (create, rotate-secret), and never again.

A registration is the tenant's alone: another tenant's looks exactly like a missing
one (404), and another tenant submitting the same jobType name gets its own
registration or ``422 unknown jobType``. A jobType a Python handler serves is refused
with ``409``. The URL passes the SSRF guard (``pulse_core.http_handlers.guard``) or
the answer is ``422`` naming ``url``, and nothing is stored.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any, ClassVar

from flask import g, request
from flask.views import MethodView
from kombu.exceptions import KombuError
from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema
from redis.exceptions import RedisError

from pulse_api import door
from pulse_api.openapi import problems
from pulse_api.parsing import PulseBlueprint
from pulse_api.problems import PROBLEM_MEDIA_TYPE
from pulse_api.schemas import JobSchema, JsonInteger, JsonNumber, ProblemSchema, WholeMatch, lone_surrogate_at
from pulse_api.services import services
from pulse_core.errors import (
    AttemptOver,
    AuthenticationFailed,
    HandlerNotFound,
    InvalidParameter,
    JobTypeTaken,
    SecretKeyMissing,
)
from pulse_core.handlers import JOB_TYPE_RE
from pulse_core.http_handlers.attempts import MAX_LEASE_SECONDS, TokenCheck, outcome_digest
from pulse_core.http_handlers.guard import MAX_URL_LENGTH, UrlRefused, check_url
from pulse_core.http_handlers.registrations import (
    DEFAULT_ROTATION_GRACE_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_RATE_LIMIT_PER_WINDOW,
    MAX_ROTATION_GRACE_SECONDS,
    MAX_TIMEOUT_SECONDS,
    RESERVED_HEADERS,
    Registration,
)
from pulse_core.jobs import Job, JobState
from pulse_core.policy import DelayPlan, RetryPolicy, parse_rate_limit, plan_delay
from pulse_core.store.job_store import DeadLetterBounds, FailureOutcome
from pulse_core.submission.parked import parked_message
from pulse_core.telemetry import metrics
from pulse_core.tenants import DEFAULT_MAX_STORED_BYTES

blp = PulseBlueprint(
    "handlers",
    __name__,
    url_prefix="/v1/handlers",
    description="HTTP endpoints registered as the handlers of a tenant's jobTypes",
)

#: Largest registration body, in bytes (20 static headers of 4096 characters fit, even \u-escaped).
MAX_BODY_BYTES = 1024 * 1024
MAX_STATIC_HEADERS = 20
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
#: A value a delivery can send (RFC 9110 field-value, in ASCII as the worker's HTTP client
#: encodes it): visible characters with spaces or tabs between, no line breaks or controls.
HEADER_VALUE_RE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")


#: The path's jobType, as the document describes it (another one is a 422 naming jobType).
JOB_TYPE_PARAMETER = {
    "in": "path",
    "name": "job_type",
    "required": True,
    "schema": {"type": "string", "pattern": JOB_TYPE_RE.pattern},
}


class HttpHandlerSchema(Schema):
    """Create or replace a registration."""

    class Meta:
        unknown = RAISE

    url = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=MAX_URL_LENGTH),
            validate.Regexp(r"^https?://[^/?#@\s]+", error="not an absolute http(s) URL"),
        ],
        metadata={"description": "https:// endpoint that receives the jobs (public addresses only)"},
    )
    timeoutSeconds = JsonInteger(
        load_default=DEFAULT_TIMEOUT_SECONDS, validate=validate.Range(min=1, max=MAX_TIMEOUT_SECONDS)
    )
    maxRetries = JsonInteger(validate=validate.Range(min=0))
    backoff = JsonNumber(
        validate=validate.Range(min=0, max=3600), metadata={"description": "Base backoff in seconds (exponential)"}
    )
    maxConcurrency = JsonInteger(validate=validate.Range(min=1, max=100_000))
    rateLimit = fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={
            "example": "50/second",
            "description": f"Deliveries started per window: 1 to {MAX_RATE_LIMIT_PER_WINDOW} a window, "
            "a window of at most a year",
        },
    )
    headers = fields.Dict(
        keys=fields.String(validate=WholeMatch(HEADER_NAME_RE, error="not a valid header name")),
        values=fields.String(
            validate=[
                validate.Length(max=4096),
                WholeMatch(
                    HEADER_VALUE_RE,
                    error="not a header value a delivery can send: visible ASCII, spaces or tabs between "
                    "(no line breaks, control or non-ASCII characters)",
                ),
            ]
        ),
        validate=validate.Length(max=MAX_STATIC_HEADERS),
        metadata={"description": "Static headers sent with every delivery (values never shown again)"},
    )

    @pre_load
    def _text_is_unicode(self, data: Any, **_: Any) -> Any:
        """A lone surrogate (valid JSON, not Unicode text) can be stored but never sent: refuse it."""
        if isinstance(data, dict):
            for name, value in data.items():
                where = lone_surrogate_at(value, str(name))
                if where:
                    raise ValidationError({str(name): [f"{where} holds a lone surrogate (not Unicode text)"]})
        return data


class HttpHandlerDocSchema(Schema):
    jobType = fields.String(required=True)
    url = fields.String(required=True)
    timeoutSeconds = fields.Integer(required=True)
    maxRetries = fields.Integer(required=True)
    backoff = fields.Float(required=True)
    maxConcurrency = fields.Integer(allow_none=True)
    rateLimit = fields.String(allow_none=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String())
    version = fields.Integer(required=True, metadata={"description": "Bumped by every create or replace"})
    createdAt = fields.String(required=True, metadata={"format": "date-time"})
    updatedAt = fields.String(required=True, metadata={"format": "date-time"})
    previousSecretValidUntil = fields.String(
        allow_none=True, metadata={"format": "date-time", "description": "While set, the old secret also signs"}
    )
    secret = fields.String(metadata={"description": "The signing secret (whsec_...): only in the answer that made it"})


class HttpHandlerListSchema(Schema):
    items = fields.List(fields.Nested(HttpHandlerDocSchema), required=True)


class RotateSecretSchema(Schema):
    class Meta:
        unknown = RAISE

    graceSeconds = JsonInteger(
        load_default=DEFAULT_ROTATION_GRACE_SECONDS,
        validate=validate.Range(min=0, max=MAX_ROTATION_GRACE_SECONDS),
        metadata={"description": "How long the old secret keeps signing deliveries too"},
    )


@blp.before_request
def _guard() -> None:
    door.guard(lambda tenant: MAX_BODY_BYTES)
    job_type = (request.view_args or {}).get("job_type")
    if job_type is not None and not JOB_TYPE_RE.fullmatch(job_type):
        raise InvalidParameter("jobType", "not a valid jobType: use 1-128 of letters, digits, '_.:-'")


def _problem(status: int, description: str) -> Any:
    return blp.alt_response(status, schema=ProblemSchema, content_type=PROBLEM_MEDIA_TYPE, description=description)


_NO_SUCH_HANDLER = "The tenant has no HTTP handler for this jobType"


def _not_found(job_type: str) -> HandlerNotFound:
    return HandlerNotFound(f"no HTTP handler for jobType {job_type!r}")


@blp.route("")
class HttpHandlers(MethodView):
    @blp.response(200, HttpHandlerListSchema)
    @problems(blp, 401)
    @blp.doc(security=[{"bearer": []}])
    def get(self) -> dict[str, Any]:
        """List the tenant's HTTP handlers."""
        return {"items": [r.document() for r in services().registrations.all(g.tenant.tenant_id)]}


@blp.route("/<string:job_type>", parameters=[JOB_TYPE_PARAMETER])
class HttpHandler(MethodView):
    @blp.arguments(HttpHandlerSchema)
    @blp.response(200, HttpHandlerDocSchema, description="Replaced (the secret is unchanged and not shown)")
    @blp.alt_response(201, schema=HttpHandlerDocSchema, success=True, description="Created, with its secret")
    @problems(blp, 400, 401, 413, 415, 422, 503)
    @_problem(409, "A Python handler serves this jobType")
    @blp.doc(security=[{"bearer": []}])
    def put(self, body: dict[str, Any], job_type: str) -> Any:
        """Register (or replace) the endpoint that handles ``job_type`` for this tenant."""
        svc = services()
        if svc.job_types.is_live(job_type):
            raise JobTypeTaken(f"jobType {job_type!r} is served by a Python handler; choose another name")
        try:
            check_url(body["url"], svc.http_settings)
        except UrlRefused as exc:
            raise InvalidParameter("url", str(exc)) from None
        max_retries = body.get("maxRetries")
        if max_retries is not None and max_retries > svc.settings.max_retries_cap:
            raise InvalidParameter("maxRetries", f"maxRetries may be at most {svc.settings.max_retries_cap}")
        rate_limit = body.get("rateLimit")
        if rate_limit is not None:
            try:
                windows = parse_rate_limit(rate_limit)
            except ValueError as exc:
                raise InvalidParameter("rateLimit", f"not a rate limit such as '50/second': {exc}") from None
            if any(item.amount > MAX_RATE_LIMIT_PER_WINDOW for item in windows):
                raise InvalidParameter(
                    "rateLimit", f"a window may allow at most {MAX_RATE_LIMIT_PER_WINDOW} deliveries"
                )
        headers = body.get("headers") or {}
        reserved = sorted(name for name in headers if name.lower() in RESERVED_HEADERS)
        if reserved:
            raise InvalidParameter("headers", f"Pulse sets these headers itself: {', '.join(reserved)}")
        if not svc.registrations.box.ready:
            raise SecretKeyMissing("the operator must set PULSE_SECRET_KEY before HTTP handlers can be registered")
        record, secret = svc.registrations.put(
            Registration(
                tenant_id=g.tenant.tenant_id,
                job_type=job_type,
                url=body["url"],
                timeout_seconds=body["timeoutSeconds"],
                max_retries=max_retries,
                backoff=body.get("backoff"),
                max_concurrency=body.get("maxConcurrency"),
                rate_limit=body.get("rateLimit"),
                headers=headers,
            )
        )
        document = record.document()
        if secret is not None:
            document["secret"] = secret
            return document, 201
        return document

    @blp.response(200, HttpHandlerDocSchema)
    @problems(blp, 401, 422)
    @_problem(404, _NO_SUCH_HANDLER)
    @blp.doc(security=[{"bearer": []}])
    def get(self, job_type: str) -> dict[str, Any]:
        """Read one registration (never its secret)."""
        found = services().registrations.get(g.tenant.tenant_id, job_type)
        if found is None:
            raise _not_found(job_type)
        return found.document()

    @blp.response(204)
    @problems(blp, 401, 422)
    @_problem(404, _NO_SUCH_HANDLER)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, job_type: str) -> None:
        """Remove the registration; jobs not yet delivered then end dead (no handler)."""
        if not services().registrations.delete(g.tenant.tenant_id, job_type):
            raise _not_found(job_type)


@blp.route("/<string:job_type>/rotate-secret", parameters=[JOB_TYPE_PARAMETER])
class RotateSecret(MethodView):
    @blp.arguments(RotateSecretSchema, required=False)
    @blp.response(200, HttpHandlerDocSchema, description="The new secret (shown once)")
    @problems(blp, 400, 401, 415, 422, 503)
    @_problem(404, _NO_SUCH_HANDLER)
    @blp.doc(security=[{"bearer": []}])
    def post(self, body: dict[str, Any], job_type: str) -> dict[str, Any]:
        """A new signing secret; the old one keeps signing too for ``graceSeconds`` (24 h)."""
        svc = services()
        if svc.registrations.get(g.tenant.tenant_id, job_type) is None:
            raise _not_found(job_type)
        if not svc.registrations.box.ready:
            raise SecretKeyMissing("the operator must set PULSE_SECRET_KEY")
        grace = (body or {}).get("graceSeconds", DEFAULT_ROTATION_GRACE_SECONDS)
        rotated = svc.registrations.rotate(g.tenant.tenant_id, job_type, grace)
        if rotated is None:
            raise _not_found(job_type)
        record, secret = rotated
        return {**record.document(), "secret": secret}


# --- long jobs: the receiver of a 202 reports with its per-attempt token -----------------

callbacks = PulseBlueprint(
    "http_attempts",
    __name__,
    url_prefix="/v1/jobs",
    description="Heartbeat and completion of an HTTP handler's long job (after it answered 202)",
)

_TOKEN_SECURITY: list[dict[str, list[str]]] = [{"attemptToken": []}]


class HeartbeatSchema(Schema):
    class Meta:
        unknown = RAISE

    extendSeconds = JsonInteger(
        validate=validate.Range(min=1, max=MAX_LEASE_SECONDS),
        metadata={"description": "The lease runs this long from now (default: the handler's timeoutSeconds)"},
    )


class CompleteSchema(Schema):
    class Meta:
        unknown = RAISE

    #: Exactly one of ``result`` and ``error`` (``_one_outcome``), said in the document too.
    OPENAPI_EXTRA: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"required": ["result"], "not": {"required": ["error"]}},
            {"required": ["error"], "not": {"required": ["result"]}},
        ]
    }

    result = fields.Raw(allow_none=True, metadata={"description": "The job's JSON result: it succeeded"})
    error = fields.Raw(
        allow_none=True, metadata={"description": "What went wrong (any JSON but null): the attempt failed"}
    )
    retryable = fields.Boolean(load_default=True, metadata={"description": "With error: worth another attempt"})

    @validates_schema
    def _one_outcome(self, data: dict[str, Any], **_: Any) -> None:
        if ("result" in data) == ("error" in data):
            raise ValidationError("send exactly one of result and error", field_name="result")


class LeaseSchema(Schema):
    jobId = fields.String(required=True)
    attempt = fields.Integer(required=True)
    leaseSeconds = fields.Integer(required=True)


@callbacks.before_request
def _attempt_token() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("send 'Authorization: Bearer <attemptToken>' (from the delivery's body)")
    g.attempt_token = token.strip()
    door.hold_body(lambda: MAX_BODY_BYTES)


#: How long a heartbeat or completion waits for its attempt's 202 to be recorded by the
#: worker that delivered it (normally a few milliseconds after the receiver answered).
HAND_OFF_WAIT_SECONDS = 5.0
#: How long a completion that lost the race to its twin waits for the twin to spend the token.
SPEND_WAIT_SECONDS = 1.0


class _Repeated(Exception):
    """A completion that repeats what its spent token already reported (its answer was lost)."""


def _current_attempt(job_id: str, extend_seconds: float | None, *, outcome: str | None = None) -> Any:
    """The job whose running, handed-off attempt the request's token is; ``_Repeated`` when
    the token already reported ``outcome`` (a completion sent again)."""
    svc = services()
    check = svc.attempt_tokens.check(job_id, g.attempt_token, extend_seconds=extend_seconds)
    # A receiver may call back as soon as it answered 202, before the worker has recorded
    # that answer (its next step): wait for it a little rather than call the attempt over.
    deadline = time.monotonic() + HAND_OFF_WAIT_SECONDS
    while check.verdict == "not-handed-off" and time.monotonic() < deadline:
        time.sleep(0.02)
        check = svc.attempt_tokens.check(job_id, g.attempt_token, extend_seconds=extend_seconds)
    if check.verdict == "not-handed-off":
        raise AttemptOver("the attempt's 202 answer is not recorded (its worker may have stopped)")
    if check.verdict == "spent" and outcome is not None and check.outcome == outcome:
        raise _Repeated()
    if check.verdict in ("bad-token", "spent"):  # spent: it can only repeat what it reported
        raise AuthenticationFailed("the attempt token is not this job's current attempt's")
    if check.verdict != "ok":
        raise AttemptOver(f"the attempt is over (the job is {check.state})")
    job = svc.store.get(job_id)
    if job is None:
        raise AttemptOver("the job is gone")
    return job


@callbacks.route("/<string:job_id>/heartbeat")
class Heartbeat(MethodView):
    @callbacks.arguments(HeartbeatSchema, required=False)
    @callbacks.response(200, LeaseSchema)
    @problems(callbacks, 400, 401, 413, 415, 422)
    @callbacks.alt_response(
        409, schema=ProblemSchema, content_type=PROBLEM_MEDIA_TYPE, description="The attempt is over"
    )
    @callbacks.doc(security=_TOKEN_SECURITY)
    def post(self, body: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
        """Keep a handed-off attempt's lease alive (the token came in the delivery's body)."""
        svc = services()
        extend = (body or {}).get("extendSeconds")
        if extend is None:  # the handler's timeoutSeconds (the token check below decides anything else)
            known = svc.store.get(job_id)
            registration = svc.registrations.get(known.tenant_id, known.job_type) if known else None
            extend = registration.timeout_seconds if registration else DEFAULT_TIMEOUT_SECONDS
        job = _current_attempt(job_id, float(extend))
        return {"jobId": job.job_id, "attempt": job.attempts, "leaseSeconds": int(extend)}


@callbacks.route("/<string:job_id>/complete")
class Complete(MethodView):
    @callbacks.arguments(CompleteSchema)
    @callbacks.response(200, JobSchema)
    @problems(callbacks, 400, 401, 413, 415, 422)
    @callbacks.alt_response(
        409, schema=ProblemSchema, content_type=PROBLEM_MEDIA_TYPE, description="The attempt is over"
    )
    @callbacks.doc(security=_TOKEN_SECURITY)
    def post(self, body: dict[str, Any], job_id: str) -> dict[str, Any]:
        """End a handed-off attempt: ``{"result": ...}`` or ``{"error": ..., "retryable": bool}``.

        The same call sent again with the same token (its answer was lost) is answered as the
        first was, with the job as it is now, and changes nothing."""
        svc = services()
        digest = outcome_digest(body)
        try:
            return self._complete(body, job_id, digest)
        except (_Repeated, AttemptOver) as exc:
            # a repeat, or the twin of a call that recorded it first: that one spends the
            # token right after (meanwhile the token's attempt is over but the token unspent)
            if isinstance(exc, AttemptOver):
                deadline = time.monotonic() + SPEND_WAIT_SECONDS
                again = svc.attempt_tokens.check(job_id, g.attempt_token)
                while again.verdict == "not-running" and time.monotonic() < deadline:
                    time.sleep(0.02)
                    again = svc.attempt_tokens.check(job_id, g.attempt_token)
                if not (again.verdict == "spent" and again.outcome == digest) and not _recorded(
                    job_id, again, body, digest
                ):
                    raise
            current = svc.store.get(job_id)
            if current is None:
                raise AttemptOver("the job is gone") from None
            return current.document()

    def _complete(self, body: dict[str, Any], job_id: str, digest: str) -> dict[str, Any]:
        svc = services()
        job = _current_attempt(job_id, None, outcome=digest)
        registration = svc.registrations.get(job.tenant_id, job.job_type)
        policy = registration.policy if registration is not None else RetryPolicy()
        tenant = svc.tenants.config.tenants.get(job.tenant_id)
        retry: DelayPlan | None = None
        ends: JobState | None = None  # the state the attempt ends in, should ``done`` be False
        if "result" in body:
            text = json.dumps(body["result"], separators=(",", ":"))
            if len(text.encode()) > svc.settings.result_max_bytes:
                raise InvalidParameter("result", f"the result is over the cap of {svc.settings.result_max_bytes} bytes")
            budget = tenant.max_stored_bytes if tenant is not None else DEFAULT_MAX_STORED_BYTES
            done = svc.store.finalize(job, JobState.SUCCEEDED, result_json=text, result_budget=budget)
            outcome, ends = metrics.Outcome.SUCCEEDED, JobState.SUCCEEDED
        else:
            error = _reported_error(body["error"])
            max_retries = job.max_retries if job.max_retries is not None else policy.max_retries
            if svc.store.cancel_requested(job_id):
                # its tenant asked it to stop: a failed attempt then ends the job cancelled, as a
                # worker's does (``pulse_worker.task.record``), never retried nor dead-lettered
                done = svc.store.finalize(job, JobState.CANCELLED, error=error)
                outcome, ends = metrics.Outcome.CANCELLED, JobState.CANCELLED
            elif body["retryable"] and job.attempts < max_retries + 1:
                settings = svc.settings
                plan = plan_delay(
                    policy.delay_before(job.attempts + 1),
                    now=svc.store.now(),
                    eta_window_seconds=settings.eta_window_seconds,
                    lease_seconds=settings.lease_seconds,
                )
                scheduled = svc.store.schedule_retry(job, due_at=plan.due_at, watch_at=plan.watch_at, error=error)
                if scheduled is FailureOutcome.CANCEL:  # a cancel asked since the look above
                    done = svc.store.finalize(job, JobState.CANCELLED, error=error)
                    outcome, ends = metrics.Outcome.CANCELLED, JobState.CANCELLED
                else:
                    done = scheduled is FailureOutcome.RECORDED
                    retry = plan
                    outcome, ends = metrics.Outcome.RETRIED, JobState.RETRYING
            else:
                # the tenant's own bounds, as the dead-letter task's (not the defaults, which
                # would keep too many letters of a tenant allowed fewer, and drop a tenant's
                # allowed more)
                bounds = (
                    DeadLetterBounds(most=tenant.max_dead_letters, days=tenant.dead_letter_days)
                    if tenant is not None
                    else DeadLetterBounds()
                )
                # filed as a dead letter only by the script that looks at cancelRequested itself
                # (a cancel asked since the look above ends it cancelled, as a worker's failure)
                marked = svc.store.mark_dead_letter(job, error)
                if marked is FailureOutcome.CANCEL:
                    done = svc.store.finalize(job, JobState.CANCELLED, error=error)
                    outcome, ends = metrics.Outcome.CANCELLED, JobState.CANCELLED
                else:
                    done = marked is FailureOutcome.RECORDED and svc.store.finalize(
                        job, JobState.DEAD, error=error, dead_letters=bounds
                    )
                    outcome, ends = metrics.Outcome.DEAD, (JobState.DEAD if marked is FailureOutcome.RECORDED else None)
        recorded = done  # by this call's script run (not found ended in the record)
        if not done and ends is not None:
            # The script that ends the attempt answers "not where it was" when redis-py ran it a
            # second time because the first run's answer was lost, or when a twin call (sent at
            # once) ended it first: the record says whether it ended so.
            done = _ended(svc.store.get(job_id), job, ends)
        if not done:
            raise AttemptOver("the attempt is over (its lease lapsed or it was cancelled)")
        first = recorded
        with contextlib.suppress(RedisError):  # recorded: the token then lives out its TTL unspent
            first = svc.attempt_tokens.spend(job_id, g.attempt_token, digest)
        if first:  # counted once: a twin that found the outcome recorded finds the token spent
            metrics.job_finished(job, outcome)
        final = svc.store.get(job_id)  # before the next attempt's message can start it
        if retry is not None:
            with contextlib.suppress(KombuError, OSError, RedisError):  # else the recovery sweep publishes it
                _send_retry(job, retry.due_at)
        return final.document() if final is not None else job.document()


def _reported_error(reported: Any) -> dict[str, Any]:
    """The error a receiver's ``complete`` reports, as it is recorded."""
    return {
        "type": "HttpHandlerReportedError",
        "message": (reported if isinstance(reported, str) else json.dumps(reported))[:2000],
        "responseClass": "reported",
    }


def _recorded(job_id: str, check: TokenCheck, body: dict[str, Any], digest: str) -> bool:
    """Whether the record shows the attempt of the token ``check`` looked at ended with this very
    outcome: a completion sent again whose first call recorded it but got no answer from Redis
    (so it never spent the token). The token is then spent, and a retry's next attempt parked."""
    if check.verdict != "not-running" or check.attempt is None:
        return False
    svc = services()
    found = svc.store.get(job_id)
    if found is None or (found.attempts, found.cycle) != check.attempt:
        return False
    if "result" in body:
        if found.state is not JobState.SUCCEEDED or found.result != body["result"]:
            return False
    else:
        # a retryable error ends the attempt retrying, or dead once its retries are spent; either
        # error ends it cancelled when a cancel was asked
        ends = {JobState.DEAD, JobState.CANCELLED} | ({JobState.RETRYING} if body["retryable"] else set())
        if found.state not in ends or found.error is None or dict(found.error) != _reported_error(body["error"]):
            return False
    with contextlib.suppress(RedisError):
        svc.attempt_tokens.spend(job_id, g.attempt_token, digest)
    if found.state is JobState.RETRYING and found.due_at is not None:
        with contextlib.suppress(KombuError, OSError, RedisError):  # else the recovery sweep publishes it
            _send_retry(found, found.due_at, unless_parked=True)
    return True


def _ended(found: Job | None, job: Job, state: JobState) -> bool:
    """Whether the record ``found`` shows ``job``'s attempt (its attempt and cycle) ended in ``state``."""
    return found is not None and found.state is state and (found.attempts, found.cycle) == (job.attempts, job.cycle)


def _send_retry(job: Job, due_at: float, *, unless_parked: bool = False) -> None:
    """Send the next attempt of ``job`` (now ``retrying``) when it is due, as a worker does
    (``pulse_worker.task.retry``): parked in Redis until due, for the workers' tick to release
    (pushing its message with a Redis broker, publishing the job with another), so no ETA
    message waits in a worker. The API always has the fair dispatcher (``Services.build``)."""
    svc = services()
    parked = parked_message(svc.celery, svc.store.dispatcher, job)
    svc.parking.park_until(job.job_id, max(0.0, due_at - svc.store.now()), parked, unless_parked=unless_parked)
