"""Request and response schemas: the validation and the OpenAPI document at once."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from pulse_core.handlers import JOB_TYPE_RE
from pulse_core.jobs import JobState

TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class MetadataSchema(Schema):
    """Caller-supplied metadata; ``traceId`` joins the job to a trace."""

    class Meta:
        unknown = RAISE

    traceId = fields.String(
        validate=validate.Regexp(TRACE_ID_RE, error="traceId must be 32 lowercase hex digits"),
        metadata={"description": "W3C trace id (32 lowercase hex) to run the job under"},
    )


class JobOptionsSchema(Schema):
    """Per-job execution options; caps are the operator's (``PULSE_*_CAP*``)."""

    class Meta:
        unknown = RAISE

    maxRetries = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "Retries after the first attempt (overrides the jobType's)"},
    )
    timeoutSeconds = fields.Integer(
        validate=validate.Range(min=1),
        metadata={"description": "Soft time limit per attempt; the hard limit is 10 s later"},
    )
    delaySeconds = fields.Float(
        validate=validate.Range(min=0),
        metadata={"description": "Start no earlier than this many seconds from now"},
    )
    runAt = fields.AwareDateTime(
        metadata={"description": "Start no earlier than this time (ISO 8601 with offset)"},
    )

    @validates_schema
    def _one_delay(self, data: dict[str, Any], **_: Any) -> None:
        if "delaySeconds" in data and "runAt" in data:
            raise ValidationError("give delaySeconds or runAt, not both", "delaySeconds")


class JobSubmitSchema(Schema):
    """The body of ``POST /v1/jobs``."""

    class Meta:
        unknown = RAISE

    jobType = fields.String(
        required=True,
        validate=validate.Regexp(JOB_TYPE_RE, error="not a valid jobType"),
        metadata={"description": "Which registered handler runs the job", "example": "diag.echo"},
    )
    payload = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={"description": "Opaque JSON object handed to the handler; Pulse never reads it"},
    )
    tenantId = fields.String(
        metadata={"description": "Optional; must be the API key's own tenant"},
    )
    idempotencyKey = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Same key and body give back the same job"},
    )
    metadata = fields.Nested(MetadataSchema)
    options = fields.Nested(JobOptionsSchema)

    @validates("payload")
    def _payload_is_object(self, value: Any, **_: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("payload must be a JSON object")


class JobErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)
    traceback = fields.String()


class JobEffectiveOptionsSchema(Schema):
    maxRetries = fields.Integer(allow_none=True)
    timeoutSeconds = fields.Integer(allow_none=True)


class JobSchema(Schema):
    """The job document."""

    jobId = fields.String(required=True)
    tenantId = fields.String(required=True)
    jobType = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf([s.value for s in JobState]))
    attempts = fields.Integer(required=True)
    queue = fields.String(required=True)
    traceId = fields.String(required=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})
    startedAt = fields.String(allow_none=True, metadata={"format": "date-time"})
    finishedAt = fields.String(allow_none=True, metadata={"format": "date-time"})
    result = fields.Raw(allow_none=True, metadata={"description": "The handler's JSON result"})
    error = fields.Nested(JobErrorSchema, allow_none=True)
    metadata = fields.Dict(required=True)
    options = fields.Nested(JobEffectiveOptionsSchema, required=True)
    runAt = fields.String(allow_none=True, metadata={"format": "date-time",
                          "description": "When a scheduled or retrying job is due"})  # fmt: skip
    replays = fields.Integer(required=True, metadata={"description": "Dead-letter replays"})
    cancelRequested = fields.Boolean(required=True)


class DeadLetterQuerySchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(metadata={"description": "nextCursor of the previous page"})
    jobType = fields.String(validate=validate.Regexp(JOB_TYPE_RE, error="not a valid jobType"))


class DeadLetterPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema), required=True)
    nextCursor = fields.String(allow_none=True, required=True)


class BulkReplaySchema(Schema):
    """Which dead letters to replay; ``dryRun`` only counts them."""

    class Meta:
        unknown = RAISE

    jobType = fields.String(validate=validate.Regexp(JOB_TYPE_RE, error="not a valid jobType"))
    deadAfter = fields.AwareDateTime(metadata={"description": "Died at or after this time"})
    deadBefore = fields.AwareDateTime(metadata={"description": "Died at or before this time"})
    dryRun = fields.Boolean(load_default=False)


class BulkReplayResultSchema(Schema):
    matched = fields.Integer(required=True)
    replayed = fields.Integer(required=True)
    dryRun = fields.Boolean(required=True)
    jobIds = fields.List(fields.String(), required=True)


class ProblemSchema(Schema):
    """An RFC 9457 problem document."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Messages per request field, for validation problems"},
    )


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())
