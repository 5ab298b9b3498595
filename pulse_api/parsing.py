"""Request parsing: flask-smorest's blueprint with a JSON reader that cannot be crashed,
and the submit bodies' fast loaders (``pulse_api.fast_load``) in front of marshmallow."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, NoReturn

import flask
import marshmallow as ma
from flask_smorest import Blueprint
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

from pulse_api import fast_load


def _not_json(name: str) -> Any:
    """``json.loads``' hook for ``NaN``, ``Infinity`` and ``-Infinity``: not JSON (RFC 8259)."""
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _finite(text: str) -> float:
    """``json.loads``' hook for a number with a fraction or exponent: one past a double's
    range (``1e400``) would be ``inf``, which every answer and message showing it would then
    write as ``Infinity`` (not JSON: clients could no longer read the job's document)."""
    value = float(text)
    if math.isinf(value):
        raise json.JSONDecodeError(f"the number {text[:40]} is out of range (past a double's)", text, 0)
    return value


def loads(text: str) -> Any:
    """A request body's JSON, strictly: no ``NaN``/``Infinity``, no number past a double's range."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


class PulseParser(FlaskParser):
    """webargs' Flask parser, strict about JSON: nesting past Python's recursion limit,
    an integer longer than Python converts (``sys.get_int_max_str_digits``, 4300 digits),
    ``NaN``/``Infinity`` (which Python's parser takes) and a number past a double's range
    (``1e400``, which it turns into ``Infinity``) are malformed (400); and about
    query strings: an unknown parameter or one given twice is refused (422), as an unknown
    body field is, and an integer is ASCII digits."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(f"Bytes decoding error : {exc.reason}", str(exc.object), exc.start) from None
        try:
            return loads(text)
        except RecursionError:
            raise json.JSONDecodeError("JSON nesting is too deep", "[", 0) from None
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer of more digits than int() converts
            limit = sys.get_int_max_str_digits()
            raise json.JSONDecodeError(f"a number has more than {limit} digits", "0", 0) from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: An unknown query parameter is refused, naming it, as an unknown body field is (a
        #: misspelt filter, ``?stat=dead``, would otherwise list every job as if it applied).
        self.DEFAULT_UNKNOWN_BY_LOCATION = {
            **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
            "query": ma.RAISE,
            "querystring": ma.RAISE,
        }
        #: One instance per schema class: webargs would build one per request (costly in
        #: marshmallow), and a schema instance keeps no state between loads.
        self._schemas: dict[type[ma.Schema], ma.Schema] = {}

    def load_querystring(self, req: flask.Request, schema: ma.Schema) -> Any:
        """The query string; a parameter given more than once is refused, naming it (422):
        ``?state=queued&state=dead`` would otherwise filter by the first alone, as if the
        second had not been sent (no parameter of Pulse's takes a list)."""
        repeated = sorted(name for name, values in req.args.lists() if len(values) > 1)
        if repeated:
            raise ma.ValidationError({name: ["given more than once; send it once"] for name in repeated})
        return super().load_querystring(req, schema)

    def _get_schema(self, argmap: Any, req: flask.Request) -> ma.Schema:
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = self._schemas.get(argmap)
            if schema is None:
                schema = self._schemas[argmap] = argmap()
            return schema
        return super()._get_schema(argmap, req)

    def _process_location_data(
        self,
        location_data: Any,
        schema: ma.Schema,
        req: flask.Request,
        location: str,
        unknown: str | None,
        validators: Any,
    ) -> Any:
        """A body with a fast loader is loaded by it when the document accepts it; any other
        body (and every refusal) is marshmallow's, as before."""
        loader = fast_load.loader_for(type(schema)) if location == "json" and not validators else None
        if loader is not None and location_data is not core.missing:
            loaded = loader.try_load(location_data)
            if loaded is not None:
                return loaded
        return super()._process_location_data(location_data, schema, req, location, unknown, validators)

    def _handle_invalid_json_error(
        self, error: json.JSONDecodeError | UnicodeDecodeError, req: flask.Request, *args: Any, **kwargs: Any
    ) -> NoReturn:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        abort(400, exc=error, messages={"json": [f"Invalid JSON body: {reason}"]})


class PulseBlueprint(Blueprint):
    """A flask-smorest blueprint parsing arguments with ``PulseParser``."""

    ARGUMENTS_PARSER = PulseParser()
