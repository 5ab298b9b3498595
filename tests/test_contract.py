"""The API held to its own OpenAPI document by schemathesis, in process (WSGI).

Every operation gets positive and negative examples within a fixed budget; the
standard checks hold: no server error, documented status codes, content types,
headers and response schemas, and invalid input refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
import schemathesis
from cryptography.fernet import Fernet
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

from pulse_api import create_app
from pulse_core.http_handlers.config import SECRET_KEY_ENV
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import auth, forget_http_handlers

#: Examples per operation and generation mode; the whole run takes well under a minute.
MAX_EXAMPLES = 150
FUZZ_QUEUE = "t-contract-fuzz"

CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_app(settings: Settings, redis: Redis) -> Iterator[Flask]:
    # A queue nobody consumes: generated jobs are recorded and queued, never run.
    announce(redis, ["diag.echo"], 600)
    # With a secret key, so that generated HTTP handler registrations are stored (and removed after).
    saved = os.environ.get(SECRET_KEY_ENV)
    os.environ[SECRET_KEY_ENV] = Fernet.generate_key().decode()
    try:
        app = create_app(replace(settings, default_queue=FUZZ_QUEUE))
    finally:
        os.environ.pop(SECRET_KEY_ENV)
        if saved is not None:
            os.environ[SECRET_KEY_ENV] = saved
    yield app
    redis.delete(FUZZ_QUEUE)
    forget_http_handlers(redis)


@pytest.fixture(scope="module")
def api_schema(fuzz_app: Flask) -> OpenApiSchema:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    schema.config.generation.update(
        modes=[POSITIVE, NEGATIVE],
        max_examples=MAX_EXAMPLES,
        database="none",
        with_security_parameters=False,  # the key is sent by the test, never mutated
    )
    return schema


#: Every operation in the document; test_every_operation_is_fuzzed keeps this list whole.
OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/batches"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/dead-letters"),
    ("POST", "/v1/dead-letters/replay"),
    ("GET", "/v1/dead-letters/{job_id}"),
    ("DELETE", "/v1/dead-letters/{job_id}"),
    ("POST", "/v1/dead-letters/{job_id}/replay"),
    ("GET", "/v1/handlers"),
    ("PUT", "/v1/handlers/{job_type}"),
    ("GET", "/v1/handlers/{job_type}"),
    ("DELETE", "/v1/handlers/{job_type}"),
    ("POST", "/v1/handlers/{job_type}/rotate-secret"),
    ("POST", "/v1/jobs/{job_id}/heartbeat"),
    ("POST", "/v1/jobs/{job_id}/complete"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
#: Negative examples need an input that can be wrong: a body or a constrained query.
CASES = [(*op, POSITIVE) for op in OPERATIONS] + [
    (*op, NEGATIVE)
    for op in OPERATIONS
    if op
    in {
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/replay"),
        ("PUT", "/v1/handlers/{job_type}"),
        ("POST", "/v1/handlers/{job_type}/rotate-secret"),
    }
]


def test_every_operation_is_fuzzed(api_schema: OpenApiSchema) -> None:
    documented = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_api_conforms_to_its_openapi_document(
    api_schema: OpenApiSchema, method: str, path: str, mode: schemathesis.GenerationMode
) -> None:
    # given any request the document describes for this operation (or, in negative
    # mode, one it rules out), sent with a valid key
    operation = api_schema[path][method]
    # A batch answers each job on its own: an invalid item is refused inside the 200.
    per_item = (method, path) == ("POST", "/v1/batches")
    checks_for = [c for c in CHECKS if not (per_item and c is checks.negative_data_rejection)]

    @given(case=operation.as_strategy(generation_mode=mode), announced=st.booleans())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exchange(case: schemathesis.Case, announced: bool) -> None:
        if announced and mode == POSITIVE and isinstance(case.body, dict) and "jobType" in case.body:
            case.body["jobType"] = "diag.echo"  # still valid; now it is admitted, not 422
        # then the answer is what the document says (and invalid input is refused)
        case.call_and_validate(headers=auth("acme"), checks=checks_for)

    exchange()
