"""The application factory: ``create_app(settings)`` builds the API."""

from __future__ import annotations

import http
import logging
import os
from typing import Any

from flask import Flask
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from werkzeug.exceptions import HTTPException

from pulse_api import batches, dead_letters, docs, fast_load, fast_submit, handlers_http, health, jobs, observability
from pulse_api.openapi import DeadLetterIdConverter, StableOperations
from pulse_api.problems import (
    PROBLEM_MEDIA_TYPE,
    from_http_exception,
    from_pulse_error,
    from_unexpected,
)
from pulse_api.schemas import ProblemSchema
from pulse_api.services import EXTENSION_KEY, Services
from pulse_core.errors import PulseError
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.redis_client import check_at_start
from pulse_core.settings import Settings
from pulse_core.tenants import TenantsConfig, TenantsSource

log = logging.getLogger("pulse.api")


class PulseApi(Api):
    """flask-smorest's Api, documenting problem documents as the error schema."""

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        return from_http_exception(error)

    def _register_responses(self) -> None:
        """flask-smorest's shared error responses, documented as problem+json (what they are)."""
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_MEDIA_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_MEDIA_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


def create_app(settings: Settings | None = None, tenants: TenantsConfig | None = None) -> Flask:
    """Build the Pulse API; settings default to ``PULSE_*`` variables.

    Without ``tenants`` the tenants file is read now (a bad one stops start-up) and
    re-read whenever it changes (a bad edit then keeps the config in force, logged).
    """
    settings = settings or Settings.from_process_env(os.environ)
    # Redis is the database: an evicting Redis refuses start-up (ConfigError), no AOF warns.
    check_at_start(settings.redis_url, settings.broker_url, log)
    source = TenantsSource(tenants) if tenants is not None else TenantsSource.load(settings.require_tenants_file())
    app = Flask("pulse_api")
    app.config.update(
        API_TITLE="Pulse",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=docs.ASSETS_URL,  # served by this app: /docs works offline
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "attemptToken": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An HTTP handler's per-attempt token (attemptToken in the delivery)",
                    },
                }
            },
        },
    )
    svc = Services.build(settings, source, HttpHandlerSettings.from_env(os.environ))
    app.extensions[EXTENSION_KEY] = svc
    app.url_map.converters["dead_letter_id"] = DeadLetterIdConverter
    api = PulseApi(app, spec_kwargs={"extra_plugins": [StableOperations()]})
    api.register_converter(DeadLetterIdConverter, DeadLetterIdConverter.parameter_schema)
    api.register_blueprint(health.blp)
    api.register_blueprint(jobs.blp)
    api.register_blueprint(batches.blp)
    api.register_blueprint(dead_letters.blp)
    api.register_blueprint(handlers_http.blp)
    api.register_blueprint(handlers_http.callbacks)
    fast_load.install(app, api.spec.to_dict())  # the submit bodies, checked by the document
    observability.install(app, svc)
    docs.install(app)
    app.register_error_handler(PulseError, from_pulse_error)
    app.register_error_handler(HTTPException, from_http_exception)
    app.register_error_handler(Exception, from_unexpected)
    fast_submit.install(app)  # plain POST /v1/jobs answered before Flask, as Flask answers it
    return app
