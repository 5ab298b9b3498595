"""The submit hot path's validation pinned to the OpenAPI document and to marshmallow.

``pulse_api.fast_load`` checks ``POST /v1/jobs`` and ``POST /v1/batches`` bodies with
the JSON schema the served document gives them, compiled, and leaves every refusal to
marshmallow. Bodies schemathesis generates from the served document, valid and
invalid: one the document refuses is refused by both the fast loader and marshmallow;
for every body the loader answers as marshmallow does (the same dict, or the same
messages). The answers to a submit are checked against the document's response schemas.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, given, settings
from marshmallow import ValidationError
from redis import Redis
from schemathesis.specs.openapi.schemas import OpenApiSchema

from pulse_api import fast_load
from pulse_api.schemas import BatchSubmitSchema, JobSchema, JobSubmitSchema
from pulse_core.store.job_types import announce
from tests.support import auth

EXAMPLES = 300
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
JSON_VALUES = (dict, list, str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    return app.test_client().get("/openapi.json").get_json()


@pytest.fixture(scope="module")
def api_schema(app: Flask) -> OpenApiSchema:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.config.generation.update(database="none", with_security_parameters=False)
    return schema


def body_schema(document: dict[str, Any], path: str) -> Any:
    """The document's own validator for an operation's JSON body (formats checked)."""
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema_rs.validator_for({**body, "components": document["components"]}, validate_formats=True)


def answer(load: Any, body: Any) -> tuple[str, Any]:
    """("loaded", the dict) or ("refused", marshmallow's messages)."""
    try:
        return "loaded", load(body)
    except ValidationError as error:
        return "refused", error.normalized_messages()


def test_the_loaders_are_compiled_from_the_served_document(app: Flask, document: dict[str, Any]) -> None:
    # given the app's fast loaders and the document it serves
    loaders = app.extensions[fast_load.EXTENSION_KEY]
    # then each loader checks with the served document's own request body schema
    for schema, path in ((JobSubmitSchema, "/v1/jobs"), (BatchSubmitSchema, "/v1/batches")):
        loader = loaders[schema]
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{loader.component}"}
        assert loader.json_schema["components"] == document["components"]


@pytest.mark.parametrize("mode", [POSITIVE, NEGATIVE], ids=["valid", "invalid"])
def test_job_bodies_are_judged_as_the_document_and_marshmallow_judge_them(
    app: Flask, api_schema: OpenApiSchema, document: dict[str, Any], mode: schemathesis.GenerationMode
) -> None:
    loader = app.extensions[fast_load.EXTENSION_KEY][JobSubmitSchema]
    by_document = body_schema(document, "/v1/jobs")
    marshmallow = JobSubmitSchema()
    operation = api_schema["/v1/jobs"]["POST"]
    seen = {"valid": 0, "invalid": 0}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def judge(case: schemathesis.Case) -> None:
        # given a body schemathesis made from the document (valid, or breaking it)
        assume(isinstance(case.body, JSON_VALUES))
        body = case.body
        with app.app_context():
            fast = loader.try_load(body)
            # then a body the document refuses is refused by the fast loader and by marshmallow
            if not by_document.is_valid(body):
                seen["invalid"] += 1
                assert fast is None, body
                assert answer(marshmallow.load, body)[0] == "refused", body
            else:
                seen["valid"] += 1
            # and whatever the body, the loader answers as marshmallow does
            assert answer(loader.load, body) == answer(marshmallow.load, body), body
            if fast is not None:
                assert fast == marshmallow.load(body)

    judge()
    # (the run saw what it meant to: valid bodies, and invalid ones in negative mode)
    assert seen["valid"] > 0 if mode is POSITIVE else seen["invalid"] > 0


@pytest.mark.parametrize("mode", [POSITIVE, NEGATIVE], ids=["valid", "invalid"])
def test_batch_bodies_are_judged_as_the_document_and_marshmallow_judge_them(
    app: Flask, api_schema: OpenApiSchema, document: dict[str, Any], mode: schemathesis.GenerationMode
) -> None:
    loader = app.extensions[fast_load.EXTENSION_KEY][BatchSubmitSchema]
    by_document = body_schema(document, "/v1/batches")
    marshmallow = BatchSubmitSchema()
    operation = api_schema["/v1/batches"]["POST"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def judge(case: schemathesis.Case) -> None:
        # given a batch schemathesis made from the document
        assume(isinstance(case.body, JSON_VALUES))
        body = case.body
        with app.app_context():
            # then one the document refuses never passes the fast path (a batch whose items
            # break the job schema is marshmallow's: each item is answered on its own)
            if not by_document.is_valid(body):
                assert loader.try_load(body) is None, body
            # and the loader answers as marshmallow does
            assert answer(loader.load, body) == answer(marshmallow.load, body), body

    judge()


def response_validator(document: dict[str, Any], path: str, status: str) -> Any:
    content = document["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]
    return jsonschema_rs.validator_for({**content, "components": document["components"]}, validate_formats=True)


def test_submit_answers_are_the_documented_job_document(
    client: FlaskClient, redis: Redis, document: dict[str, Any]
) -> None:
    # given a jobType a worker announced
    announce(redis, ["diag.echo"], 600)
    body = {
        "jobType": "diag.echo",
        "payload": {"n": 1},
        "metadata": {"team": "a", "traceId": "0af7651916cd43dd8448eb211c80319c"},
        "options": {"maxRetries": 2, "delaySeconds": 30, "priority": 7},
        "idempotencyKey": "fast-load-answer-1",
    }
    # when it is submitted, then sent again with the same key, and in a batch
    first = client.post("/v1/jobs", json=body, headers=auth("acme"))
    again = client.post("/v1/jobs", json=body, headers=auth("acme"))
    batch = client.post("/v1/batches", json={"jobs": [body, {"jobType": "diag.echo"}]}, headers=auth("acme"))
    # then each answer validates against the document's response schema
    assert (first.status_code, again.status_code, batch.status_code) == (202, 200, 200), first.get_json()
    assert response_validator(document, "/v1/jobs", "202").is_valid(first.get_json())
    assert response_validator(document, "/v1/jobs", "200").is_valid(again.get_json())
    assert response_validator(document, "/v1/batches", "200").is_valid(batch.get_json())
    # and is what the marshmallow dump of the job document gave (nothing more, nothing less)
    for job in (first.get_json(), again.get_json(), batch.get_json()["items"][0]["job"]):
        assert job == JobSchema().dump(job)
    assert first.get_json()["options"] == {
        "maxRetries": 2,
        "timeoutSeconds": first.get_json()["options"]["timeoutSeconds"],
        "priority": 7,
    }
    assert batch.get_json()["items"][1]["problem"]["errors"] == {"payload": ["Missing data for required field."]}


DEEP: dict[str, Any] = {}
_node = DEEP
for _ in range(40):
    _node["d"] = {}
    _node = _node["d"]

#: Bodies on the edges between what the document says and what marshmallow checks in code.
EDGES = {
    "integer written as 5.0": {"jobType": "a", "payload": {}, "options": {"maxRetries": 5.0}},
    "boolean for an integer": {"jobType": "a", "payload": {}, "options": {"priority": True}},
    "infinite delay": {"jobType": "a", "payload": {}, "options": {"delaySeconds": float("inf")}},
    "huge integer delay": {"jobType": "a", "payload": {}, "options": {"delaySeconds": 10**400}},
    "delay and runAt": {"jobType": "a", "payload": {}, "options": {"delaySeconds": 1, "runAt": "2030-01-01T00:00:00Z"}},
    "runAt without offset": {"jobType": "a", "payload": {}, "options": {"runAt": "2030-01-01T00:00:00"}},
    "runAt leap second": {"jobType": "a", "payload": {}, "options": {"runAt": "2030-12-31T23:59:60Z"}},
    "runAt with offset": {"jobType": "a", "payload": {}, "options": {"runAt": "2030-01-01T01:00:00+01:00"}},
    "metadata key of 65": {"jobType": "a", "payload": {}, "metadata": {"k" * 65: 1}},
    "empty metadata key": {"jobType": "a", "payload": {}, "metadata": {"": 1}},
    "metadata over 4096 bytes": {"jobType": "a", "payload": {}, "metadata": {f"k{i}": "v" * 200 for i in range(30)}},
    "metadata object value": {"jobType": "a", "payload": {}, "metadata": {"k": {}}},
    "traceId with a newline": {"jobType": "a", "payload": {}, "metadata": {"traceId": "0" * 32 + "\n"}},
    "jobType with a newline": {"jobType": "a\n", "payload": {}},
    "payload 41 deep": {"jobType": "a", "payload": DEEP},
    "lone surrogate in payload": {"jobType": "a", "payload": {"t": "\ud800"}},
    "lone surrogate in a key": {"jobType": "a", "payload": {"\udc00": 1}},
    "unknown field": {"jobType": "a", "payload": {}, "extra": 1},
    "null options": {"jobType": "a", "payload": {}, "options": None},
    "every field": {
        "jobType": "a.b:c-d_e",
        "payload": {"x": [1, {"y": None}]},
        "tenantId": "acme",
        "idempotencyKey": "k",
        "metadata": {"traceId": "0af7651916cd43dd8448eb211c80319c", "n": 1.5, "b": False, "z": None},
        "options": {"maxRetries": 0, "timeoutSeconds": 1, "delaySeconds": 2, "priority": 9},
    },
}


@pytest.mark.parametrize("body", list(EDGES.values()), ids=list(EDGES))
def test_edge_bodies_are_judged_as_marshmallow_judges_them(app: Flask, body: dict[str, Any]) -> None:
    # given a body on the edge of what the document states
    loader = app.extensions[fast_load.EXTENSION_KEY][JobSubmitSchema]
    # when the fast loader and marshmallow load it, then they answer alike
    assert answer(loader.load, body) == answer(JobSubmitSchema().load, body)
