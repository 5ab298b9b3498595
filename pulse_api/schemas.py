"""Request and response schemas: the validation and the OpenAPI document at once."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates,
    validates_schema,
)

from pulse_core import json_text
from pulse_core.handlers import JOB_TYPE_RE
from pulse_core.jobs import DEFAULT_PRIORITY, MAX_PRIORITY, JobState
from pulse_core.store.listing import CURSOR_PATTERN

TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")

#: Deepest nesting of objects and arrays accepted in ``payload``.
MAX_JSON_DEPTH = 32
#: Most object keys accepted in one ``payload``, counted at every level.
MAX_JSON_KEYS = 10_000
#: Most entries, and most bytes (as compact JSON), in ``metadata``.
MAX_METADATA_KEYS = 32
MAX_METADATA_BYTES = 4096
#: Largest page of ``GET /v1/jobs``.
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

_SCALAR_TYPES = ["string", "number", "boolean", "null"]


class WholeMatch(validate.Regexp):
    """``validate.Regexp`` that must match the whole value: Python's ``$`` also matches before a
    trailing newline (``"echo\\n"``), where the OpenAPI document's (ECMA) pattern does not."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def check_json_bounds(value: Any) -> None:
    """Raise ``ValidationError`` when ``value`` nests deeper or has more keys than allowed."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    key_count = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            key_count += len(node)
            if key_count > MAX_JSON_KEYS:
                raise ValidationError(f"more than {MAX_JSON_KEYS} keys")
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """Where ``value`` holds a string that is not Unicode text (a lone surrogate such as
    ``"\\ud800"``, valid JSON but not encodable as UTF-8), as a dotted path; else ``None``."""
    try:
        json_text.unicode(value).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return where or "json"
        elif isinstance(node, dict):
            for key, child in node.items():
                inner = f"{where}.{key}" if where else str(key)
                try:
                    str(key).encode("utf-8")
                except UnicodeEncodeError:
                    return where or "json"
                stack.append((child, inner))
        elif isinstance(node, list):
            stack.extend((child, where) for child in node)
    return None


class JsonInteger(fields.Integer):
    """An integer as JSON has it: ``5``, not ``"5"``, ``5.0`` or ``true``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryInteger(fields.Integer):
    """An integer in a query string as the document's ``integer`` reads: ASCII digits, an
    optional minus; not ``int()``'s leniency (``+5``, `` 5``, ``5_0`` read as 50, a fullwidth
    or Arabic-Indic digit)."""

    _DIGITS = re.compile(r"-?[0-9]+")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or self._DIGITS.fullmatch(value) is None:
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class JsonNumber(fields.Float):
    """A JSON number: ``1.5`` or ``2``, not ``"1.5"`` or ``true``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class JsonBoolean(fields.Boolean):
    """``true`` or ``false`` only (marshmallow's Boolean also takes 0, 1, "yes", ...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class JobOptionsSchema(Schema):
    """Per-job execution options; caps are the operator's (``PULSE_*_CAP*``)."""

    class Meta:
        unknown = RAISE

    #: In the OpenAPI document too: ``delaySeconds`` and ``runAt`` exclude each other.
    OPENAPI_EXTRA: ClassVar[dict[str, Any]] = {"not": {"required": ["delaySeconds", "runAt"]}}

    maxRetries = JsonInteger(
        validate=validate.Range(min=0),
        metadata={"description": "Retries after the first attempt (overrides the jobType's)"},
    )
    timeoutSeconds = JsonInteger(
        validate=validate.Range(min=1),
        metadata={"description": "Soft time limit per attempt; the hard limit is 10 s later"},
    )
    delaySeconds = JsonNumber(
        validate=validate.Range(min=0),
        metadata={"description": "Start no earlier than this many seconds from now"},
    )
    runAt = fields.AwareDateTime(
        metadata={"description": "Start no earlier than this time (ISO 8601 with offset)"},
    )
    priority = JsonInteger(
        validate=validate.Range(min=0, max=MAX_PRIORITY),
        metadata={
            "description": f"0-{MAX_PRIORITY}, higher runs sooner (default "
            f"{DEFAULT_PRIORITY}); see docs/queues-and-fairness.md"
        },
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
        validate=WholeMatch(JOB_TYPE_RE, error="not a valid jobType"),
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
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        metadata={
            "description": "Caller's labels (string, number, boolean or null values, "
            f"at most {MAX_METADATA_KEYS} of them and {MAX_METADATA_BYTES} bytes as JSON); "
            "traceId joins the job to a trace",
            "maxProperties": MAX_METADATA_KEYS,
            "properties": {
                "traceId": {
                    "type": "string",
                    "pattern": TRACE_ID_RE.pattern,
                    "description": "W3C trace id (32 lowercase hex) to run the job under",
                }
            },
            "additionalProperties": {"type": _SCALAR_TYPES},
        },
    )
    options = fields.Nested(JobOptionsSchema)

    @pre_load
    def _text_is_unicode(self, data: Any, **_: Any) -> Any:
        """A lone surrogate cannot be stored, fingerprinted or handed on: refuse it by field."""
        if isinstance(data, dict):
            for name in ("payload", "metadata", "idempotencyKey", "tenantId", "jobType"):
                where = lone_surrogate_at(data.get(name), name) if name in data else None
                if where:
                    raise ValidationError({name: [f"{where} holds a lone surrogate (not Unicode text)"]})
            where = lone_surrogate_at(data)
            if where:
                raise ValidationError({where.split(".", 1)[0]: ["holds a lone surrogate (not Unicode text)"]})
        return data

    @validates("payload")
    def _payload_is_bounded_object(self, value: Any, **_: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("payload must be a JSON object")
        check_json_bounds(value)

    @validates("metadata")
    def _metadata_is_small_labels(self, value: Any, **_: Any) -> None:
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"metadata holds at most {MAX_METADATA_KEYS} entries")
        for key, item in value.items():
            if isinstance(item, dict | list):
                raise ValidationError({key: ["must be a string, number, boolean or null"]})
        trace = value.get("traceId")
        if "traceId" in value and not (isinstance(trace, str) and TRACE_ID_RE.fullmatch(trace)):
            raise ValidationError({"traceId": ["traceId must be 32 lowercase hex digits"]})
        size = len(json_text.compact(value).encode("utf-8"))
        if size > MAX_METADATA_BYTES:
            raise ValidationError(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")


class BatchSubmitSchema(Schema):
    """The body of ``POST /v1/batches``: jobs, each checked on its own as a job body."""

    class Meta:
        unknown = RAISE

    jobs = fields.List(
        fields.Dict(
            metadata={
                "description": "A job body, as for POST /v1/jobs (an item that breaks it is refused on its own)",
                "allOf": [{"$ref": "#/components/schemas/JobSubmit"}],
            }
        ),
        required=True,
        validate=validate.Length(min=1),
        metadata={
            "description": "The jobs, each validated like a POST /v1/jobs body and answered "
            "on its own; at most PULSE_BATCH_MAX_JOBS (500 by default)"
        },
    )


def _cursor() -> fields.String:
    """The ``cursor`` query parameter: the opaque ``nextCursor`` of a previous page."""
    return fields.String(
        validate=WholeMatch(CURSOR_PATTERN, error="not a cursor this API returned"),
        metadata={"description": "nextCursor of the previous page (opaque)"},
    )


class JobListArgsSchema(Schema):
    """Query string of ``GET /v1/jobs``."""

    class Meta:
        unknown = RAISE

    state = fields.String(validate=validate.OneOf([s.value for s in JobState]))
    jobType = fields.String(validate=WholeMatch(JOB_TYPE_RE, error="not a valid jobType"))
    limit = QueryInteger(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": "Page size"},
    )
    cursor = _cursor()


class JobErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)
    traceback = fields.String()
    status = fields.Integer(metadata={"description": "HTTP jobTypes: the last response's status"})
    body = fields.String(metadata={"description": "HTTP jobTypes: the first 1 KiB of the last response's body"})
    responseClass = fields.String(
        metadata={"description": "HTTP jobTypes: 2xx, 4xx, 5xx, timeout, connection, refused"}
    )


class JobEffectiveOptionsSchema(Schema):
    maxRetries = fields.Integer(allow_none=True)
    timeoutSeconds = fields.Integer(allow_none=True)
    priority = fields.Integer(required=True)


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
    runAt = fields.String(
        allow_none=True, metadata={"format": "date-time", "description": "When a scheduled or retrying job is due"}
    )
    replays = fields.Integer(required=True, metadata={"description": "Dead-letter replays"})
    cancelRequested = fields.Boolean(required=True)
    handlerVersion = fields.Integer(
        allow_none=True,
        metadata={"description": "HTTP jobTypes: the handler registration version of the last delivery"},
    )


class DeadLetterQuerySchema(Schema):
    limit = QueryInteger(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    cursor = _cursor()
    jobType = fields.String(validate=WholeMatch(JOB_TYPE_RE, error="not a valid jobType"))


class JobPageSchema(Schema):
    """A page of jobs, newest first: the one shape of every listing."""

    items = fields.List(fields.Nested(JobSchema), required=True)
    nextCursor = fields.String(required=True, allow_none=True, metadata={"description": "null on the last page"})


class DeadLetterPageSchema(JobPageSchema):
    """A page of the tenant's dead letters, newest first."""


class BulkReplaySchema(Schema):
    """Which dead letters to replay; ``dryRun`` only counts them."""

    class Meta:
        unknown = RAISE

    jobType = fields.String(validate=WholeMatch(JOB_TYPE_RE, error="not a valid jobType"))
    deadAfter = fields.AwareDateTime(metadata={"description": "Died at or after this time"})
    deadBefore = fields.AwareDateTime(metadata={"description": "Died at or before this time"})
    dryRun = JsonBoolean(load_default=False)

    @validates_schema
    def _window_is_not_empty(self, data: dict[str, Any], **_: Any) -> None:
        after, before = data.get("deadAfter"), data.get("deadBefore")
        if after is not None and before is not None and after > before:
            # an empty window matches nothing: most likely the two were swapped
            raise ValidationError("must not be later than deadBefore", "deadAfter")


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


class JobListSchema(JobPageSchema):
    """A page of the tenant's jobs, newest first (``jobs`` repeats ``items`` for older clients)."""

    jobs = fields.List(fields.Nested(JobSchema), required=True, metadata={"deprecated": True})


class BatchItemSchema(Schema):
    """One job's answer in a batch: a job, or the problem that refused it."""

    status = fields.Integer(required=True, metadata={"description": "202 new job, 200 idempotent replay, 4xx/5xx"})
    job = fields.Nested(JobSchema)
    replayed = fields.Boolean()
    problem = fields.Nested(ProblemSchema)


class BatchResultSchema(Schema):
    """The answers to a batch, in request order."""

    accepted = fields.Integer(required=True, metadata={"description": "New jobs and replays"})
    refused = fields.Integer(required=True)
    items = fields.List(fields.Nested(BatchItemSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())
