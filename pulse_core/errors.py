"""One error tree: every error Pulse raises on purpose is a ``PulseError``.

The API maps each class to one HTTP status and problem type in
``pulse_api.problems``; the worker decides retry or dead-letter by class.
"""

from __future__ import annotations


class PulseError(Exception):
    """Root of every deliberate Pulse error."""

    #: The request field the error is about, when there is one.
    field: str | None = None
    #: Why a submission this error refuses counts as refused: the ``reason`` label of
    #: ``pulse_jobs_rejected_total`` (a ``pulse_core.telemetry.metrics.RejectReason`` value).
    reason: str = "validation"


class ConfigError(PulseError):
    """A setting or the tenants file is wrong; start-up stops with this message."""


class DuplicateHandler(ConfigError):
    """Two handlers were registered under one jobType."""


class AuthenticationFailed(PulseError):
    """The request carries no API key, or one no tenant owns."""

    reason = "unauthenticated"


class JobNotFound(PulseError):
    """No such job for this tenant (another tenant's job looks exactly the same)."""


class InvalidIdempotencyKey(PulseError):
    """The ``Idempotency-Key`` header is malformed or disagrees with ``idempotencyKey``."""

    field = "idempotencyKey"


class BatchTooLarge(PulseError):
    """A batch carries more jobs than ``PULSE_BATCH_MAX_JOBS``."""

    field = "jobs"


class UnknownJobType(PulseError):
    """No live worker has announced a handler for this jobType."""

    field = "jobType"

    def __init__(self, job_type: str) -> None:
        super().__init__(f"no handler is registered for jobType {job_type!r}")
        self.job_type = job_type


class TenantMismatch(PulseError):
    """The body names a tenant other than the API key's."""

    field = "tenantId"


class UnsupportedMediaType(PulseError):
    """The request body is not JSON."""


class PayloadTooLarge(PulseError):
    """The request body is larger than the tenant's ``max_payload_bytes``."""


class IdempotencyConflict(PulseError):
    """The idempotency key was already used with a different job body."""

    field = "idempotencyKey"
    reason = "idempotency_conflict"


class Refused(PulseError):
    """The door is closed for now; the client may retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        #: Whole seconds (the API answers them as ``Retry-After``).
        self.retry_after = retry_after


class RateLimited(Refused):
    """The tenant is over one of its rate limits."""

    reason = "rate_limit"


class BacklogFull(Refused):
    """The tenant has ``max_pending`` jobs not yet final."""

    reason = "backlog"


class StorageBudgetFull(Refused):
    """The tenant's records hold its ``max_stored_bytes``: no new record fits until some expire."""

    reason = "storage_budget"


class BrokerUnavailable(PulseError):
    """The job could not be published; nothing was enqueued."""

    reason = "unavailable"


class JobFailed(PulseError):
    """Raised by a handler (or by Pulse on its behalf) to fail the current attempt."""


class RetryableError(JobFailed):
    """A handler's failure that is worth another attempt (any other exception is too)."""


class RetryLater(RetryableError):
    """Fail this attempt and retry after ``seconds`` instead of the backoff delay."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry requested in {seconds:g} s")
        self.seconds = max(0.0, float(seconds))


class PermanentError(JobFailed):
    """A handler's failure that no retry can fix; the job goes straight to dead."""


class ResultTooLarge(PermanentError):
    """The handler's result exceeds the configured size cap (the same result every time)."""


class ResultNotSerializable(PermanentError):
    """The handler returned something that is not JSON (the same result every time)."""


class UnknownJobTypeAtWorker(PermanentError):
    """The worker that took the job has no handler for its jobType (any more)."""

    def __init__(self, job_type: str) -> None:
        super().__init__(f"no handler is registered for jobType {job_type!r} on this worker")


class WorkerLost(JobFailed):
    """The attempt's worker died (killed, crashed or hard time limit) before recording it."""


class JobDead(PulseError):
    """Raised by the generic task once a job's record is final as ``dead``, so that Celery
    (and Flower) see the task fail. Its message names the job and its last error's type,
    never the payload or the handler's message."""


class JobCancelled(JobFailed):
    """Raised by a handler that saw ``ctx.cancel_requested()``: the job ends ``cancelled``."""


class InvalidParameter(PulseError):
    """A request value the schema cannot judge alone: an option over a cap, a bad cursor."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class JobNotCancellable(PulseError):
    """The job is already in a final state."""


class HandlerNotFound(PulseError):
    """The tenant has no HTTP handler for this jobType (another tenant's looks the same)."""


class JobTypeTaken(PulseError):
    """An HTTP handler cannot be registered under a jobType a Python handler serves."""

    field = "jobType"


class SecretKeyMissing(PulseError):
    """``PULSE_SECRET_KEY`` is not set, so no signing secret can be kept."""


class AttemptHandedOff(JobFailed):
    """Not a failure: the attempt goes on outside the worker (an HTTP handler answered
    ``202`` and reports with heartbeat/complete); the worker records nothing."""


class AttemptOver(PulseError):
    """A long HTTP job's heartbeat or completion came for an attempt that is over."""
