"""Swagger UI at ``/docs``, served whole from this API: no CDN, so it works offline.

flask-smorest renders the page; its script and style files come from the Swagger UI
distribution that the ``flask-swagger-ui`` package ships, under ``/docs/assets/``.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Flask, Response, send_from_directory

#: Where the page loads its assets from (flask-smorest's OPENAPI_SWAGGER_UI_URL).
ASSETS_URL = "/docs/assets/"
ASSETS_DIR = Path(flask_swagger_ui.__file__).parent / "dist"


def install(app: Flask) -> None:
    """Serve the Swagger UI assets (not part of the OpenAPI document)."""

    def swagger_ui_asset(filename: str) -> Response:
        return send_from_directory(ASSETS_DIR, filename, max_age=24 * 3600)

    app.add_url_rule(f"{ASSETS_URL}<path:filename>", "swagger_ui_asset", swagger_ui_asset)
