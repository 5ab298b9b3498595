"""Liveness, readiness and the generated API description."""

from __future__ import annotations

import re
from dataclasses import replace

from flask.testing import FlaskClient

from pulse_api import create_app
from pulse_api.openapi import OPERATION_IDS
from pulse_core.settings import Settings


def test_healthz_and_readyz_answer_200(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"redis": "ok", "broker": "ok"}


def test_readyz_is_503_when_redis_is_down(settings: Settings) -> None:
    down = "redis://127.0.0.1:1/0"
    client = create_app(replace(settings, redis_url=down, broker_url=down)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "redis" in response.get_json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_openapi_document_describes_the_endpoints(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    post = spec["paths"]["/v1/jobs"]["post"]
    assert {"202", "400", "401", "415", "422"} <= set(post["responses"])
    assert "JobSubmit" in spec["components"]["schemas"]
    get = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert {"200", "401", "404"} <= set(get["responses"])
    assert "/readyz" in spec["paths"]
    assert {"200", "404", "409"} <= set(spec["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"])
    for path in (
        "/v1/dead-letters",
        "/v1/dead-letters/{job_id}",
        "/v1/dead-letters/replay",
        "/v1/dead-letters/{job_id}/replay",
    ):
        assert path in spec["paths"], path
    assert "JobOptions" in spec["components"]["schemas"]


def test_swagger_ui_is_served(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert b"swagger" in response.data.lower()


def test_every_operation_has_a_stable_operation_id_and_typed_items(client: FlaskClient) -> None:
    # given the OpenAPI document
    spec = client.get("/openapi.json").get_json()
    operations = {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }
    # then every operation has the operationId of the one table, unique
    assert {key: op.get("operationId") for key, op in operations.items()} == {
        key: OPERATION_IDS[key] for key in operations
    }
    assert len({op["operationId"] for op in operations.values()}) == len(operations)
    # and a batch's items are job bodies, by reference
    items = spec["components"]["schemas"]["BatchSubmit"]["properties"]["jobs"]["items"]
    assert {"$ref": "#/components/schemas/JobSubmit"} in items["allOf"]
    # and the links lead from a submit to the job and from a dead letter to its replay
    submit_links = operations[("POST", "/v1/jobs")]["responses"]["202"]["links"]
    assert submit_links["GetJob"]["operationId"] == "getJob"
    assert submit_links["CancelJob"]["operationId"] == "cancelJob"
    dead_links = operations[("GET", "/v1/dead-letters")]["responses"]["200"]["links"]
    assert dead_links["ReplayDeadLetter"]["operationId"] == "replayDeadLetter"
    # and every link names an operation that exists
    ids = {op["operationId"] for op in operations.values()}
    for op in operations.values():
        for response in op["responses"].values():
            assert {link["operationId"] for link in response.get("links", {}).values()} <= ids


def test_swagger_ui_loads_every_asset_from_the_api_itself(client: FlaskClient) -> None:
    # given /docs
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # then every script and style it references is a path on this API (no CDN) ...
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced, html
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in referenced), referenced
    # ... and each one is served, non-empty
    for ref in referenced:
        with client.get(ref) as asset:
            assert asset.status_code == 200, ref
            assert len(asset.data) > 1000, ref
    assert any(ref.endswith("swagger-ui-bundle.js") for ref in referenced)
    # and the page reads this API's document
    assert "/openapi.json" in html
