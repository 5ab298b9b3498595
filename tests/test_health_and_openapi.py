"""Liveness, readiness and the generated API description."""

from __future__ import annotations

from dataclasses import replace

from flask.testing import FlaskClient

from pulse_api import create_app
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
