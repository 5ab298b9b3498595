"""Request parsing: flask-smorest's blueprint with a JSON reader that cannot be crashed."""

from __future__ import annotations

import json
from typing import Any

import flask
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser


class PulseParser(FlaskParser):
    """webargs' Flask parser; JSON nested past Python's recursion limit is malformed (400)."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            raise json.JSONDecodeError("JSON nesting is too deep", "[", 0) from None


class PulseBlueprint(Blueprint):
    """A flask-smorest blueprint parsing arguments with ``PulseParser``."""

    ARGUMENTS_PARSER = PulseParser()
