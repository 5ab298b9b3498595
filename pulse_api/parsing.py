"""Request parsing: flask-smorest's blueprint with a JSON reader that cannot be crashed."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import flask
from flask_smorest import Blueprint
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request


def _not_json(name: str) -> Any:
    """``json.loads``' hook for ``NaN``, ``Infinity`` and ``-Infinity``: not JSON (RFC 8259)."""
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


class PulseParser(FlaskParser):
    """webargs' Flask parser, strict about JSON: nesting past Python's recursion limit and
    ``NaN``/``Infinity`` (which Python's parser takes) are malformed (400)."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(f"Bytes decoding error : {exc.reason}", str(exc.object), exc.start) from None
        try:
            return json.loads(text, parse_constant=_not_json)
        except RecursionError:
            raise json.JSONDecodeError("JSON nesting is too deep", "[", 0) from None

    def _handle_invalid_json_error(
        self, error: json.JSONDecodeError | UnicodeDecodeError, req: flask.Request, *args: Any, **kwargs: Any
    ) -> NoReturn:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        abort(400, exc=error, messages={"json": [f"Invalid JSON body: {reason}"]})


class PulseBlueprint(Blueprint):
    """A flask-smorest blueprint parsing arguments with ``PulseParser``."""

    ARGUMENTS_PARSER = PulseParser()
