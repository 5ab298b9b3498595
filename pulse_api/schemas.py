"""Request and response schemas: the validation and the OpenAPI document at once."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

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

    @validates("payload")
    def _payload_is_object(self, value: Any, **_: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("payload must be a JSON object")


class JobErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)
    traceback = fields.String()


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
