"""The submit bodies checked by their OpenAPI schema, compiled: the hot path's validation.

``POST /v1/jobs`` and ``POST /v1/batches`` take the JSON schema the served OpenAPI
document gives their body (what apispec makes of ``JobSubmitSchema`` and
``BatchSubmitSchema``; the schemas stay the one source), compiled once per app with
``jsonschema_rs``, plus the rules the marshmallow schema checks in code that the
document states only in prose: ``payload``'s depth and key count, ``metadata``'s
size and key lengths, lone surrogates, integers written as integers, finite numbers,
``runAt`` read by marshmallow's own field. A body that passes all of that is loaded
here, into the same dict marshmallow's ``load`` returns. Every other body goes to
marshmallow's ``load``, which refuses it with the messages it always gave (so the
problem documents, field by field, cannot drift) or, where the document is stricter
than the code, accepts it as before.

Measured on this machine (2 cores) for ``{"jobType", "payload"}``: marshmallow's load
39 us, ``fastjsonschema`` 2 us, ``jsonschema_rs`` 0.5 us (4-10x fastjsonschema on
larger bodies, already installed with schemathesis, and 2020-12 as OpenAPI 3.1 is);
msgspec and pydantic-core would need a second declaration of the body, not the
document's. ``tests/test_fast_load.py`` pins the loader to the document and to
marshmallow with bodies generated from the document, valid and invalid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema_rs
from flask import Flask, current_app
from marshmallow import Schema, ValidationError

from pulse_api.schemas import (
    MAX_METADATA_BYTES,
    BatchSubmitSchema,
    JobOptionsSchema,
    JobSubmitSchema,
    check_json_bounds,
    lone_surrogate_at,
)
from pulse_core import json_text

EXTENSION_KEY = "pulse.fast_load"

#: The order marshmallow's load gives the fields (their declaration order).
_JOB_FIELDS = tuple(JobSubmitSchema._declared_fields)
_OPTION_FIELDS = tuple(JobOptionsSchema._declared_fields)
_INTEGER_OPTIONS = frozenset({"maxRetries", "timeoutSeconds", "priority"})
_METADATA_KEY_LENGTH = (1, 64)


class Doubt(Exception):
    """Raised by a finishing step: this body goes to marshmallow."""


class FastLoader:
    """One request body's component of the OpenAPI document, compiled, then finished in code."""

    def __init__(
        self,
        document: Mapping[str, Any],
        component: str,
        schema: Schema,
        finish: Callable[[Any], dict[str, Any]],
    ) -> None:
        self.component = component
        #: The component as the document gives it (with the document's other components for $refs).
        self.json_schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
        self._is_valid = jsonschema_rs.validator_for(self.json_schema, validate_formats=True).is_valid
        self._schema = schema
        self._finish = finish

    def try_load(self, data: Any) -> dict[str, Any] | None:
        """The loaded body when the document and the rules in code accept it; else ``None``."""
        try:
            # jsonschema_rs raises on what it cannot convert (a lone surrogate, ...), and
            # what the finishing step doubts raises too: either way marshmallow judges.
            return self._finish(data) if self._is_valid(data) else None
        except (Doubt, ValidationError, ValueError, TypeError, OverflowError, RecursionError):
            return None

    def load(self, data: Any) -> Mapping[str, Any]:
        """The loaded body, or marshmallow's ``ValidationError`` refusing it."""
        loaded = self.try_load(data)
        if loaded is None:
            loaded = self._schema.load(data)
        return loaded


_RUN_AT = JobOptionsSchema().fields["runAt"]


def _finish_options(options: Mapping[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = {}
    for name in _OPTION_FIELDS:
        if name not in options:
            continue
        value = options[name]
        if name in _INTEGER_OPTIONS:
            if type(value) is not int:  # 5.0 is an integer to JSON Schema, not to Pulse
                raise Doubt(name)
        elif name == "delaySeconds":
            value = float(value)
            if not math.isfinite(value):
                raise Doubt(name)
        elif name == "runAt":
            value = _RUN_AT.deserialize(value)
        loaded[name] = value
    return loaded


def finish_job(data: Mapping[str, Any]) -> dict[str, Any]:
    """A job body the document accepts, checked for what the document says only in prose,
    and loaded as ``JobSubmitSchema().load`` loads it."""
    if lone_surrogate_at(data) is not None:
        raise Doubt("lone surrogate")
    check_json_bounds(data["payload"])
    loaded: dict[str, Any] = {}
    for name in _JOB_FIELDS:
        if name not in data:
            continue
        value = data[name]
        if name == "payload":
            value = dict(value)
        elif name == "metadata":
            low, high = _METADATA_KEY_LENGTH
            if not all(low <= len(key) <= high for key in value):
                raise Doubt("metadata key length")
            if len(json_text.compact(value).encode("utf-8")) > MAX_METADATA_BYTES:
                raise Doubt("metadata size")
            value = dict(value)
        elif name == "options":
            value = _finish_options(value)
        loaded[name] = value
    return loaded


def finish_batch(data: Mapping[str, Any]) -> dict[str, Any]:
    """A batch the document accepts, loaded as ``BatchSubmitSchema().load`` loads it (each
    job is loaded on its own later, by the job loader)."""
    return {"jobs": [dict(job) for job in data["jobs"]]}


def install(app: Flask, document: Mapping[str, Any]) -> None:
    """Compile the submit bodies' loaders from the app's OpenAPI ``document``."""
    app.extensions[EXTENSION_KEY] = {
        JobSubmitSchema: FastLoader(document, "JobSubmit", JobSubmitSchema(), finish_job),
        BatchSubmitSchema: FastLoader(document, "BatchSubmit", BatchSubmitSchema(), finish_batch),
    }


def loader_for(schema: type[Schema]) -> FastLoader | None:
    """The current app's fast loader of ``schema``'s bodies, if it has one."""
    loaders: dict[type[Schema], FastLoader] = current_app.extensions.get(EXTENSION_KEY, {})
    return loaders.get(schema)
