"""Every refusal is an RFC 9457 problem document that names what was wrong."""

from __future__ import annotations

import io

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_core.store.job_types import announce
from tests.support import auth


def assert_problem(response, status: int, type_suffix: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert body["type"].endswith("/" + type_suffix)
    assert body["title"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
def test_missing_or_wrong_key_is_401(client: FlaskClient, headers: dict) -> None:
    response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_status_read_needs_a_key(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/jobs/anything"), 401, "unauthorized")


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data='{"jobType": ', headers=auth("acme"), content_type="application/json")
    body = assert_problem(response, 400, "malformed-request")
    assert "JSON" in body["detail"]


def test_non_json_body_is_415(client: FlaskClient) -> None:
    response = client.post(
        "/v1/jobs", data="jobType=diag.echo", headers=auth("acme"), content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "jobType"),
        ({"jobType": "diag.echo"}, "payload"),
        ({"jobType": "diag.echo", "payload": [1, 2]}, "payload"),
        ({"jobType": "diag.echo", "payload": None}, "payload"),
        ({"jobType": "has spaces", "payload": {}}, "jobType"),
        ({"jobType": "diag.echo", "payload": {}, "surprise": 1}, "surprise"),
        ({"jobType": "diag.echo", "payload": {}, "metadata": {"traceId": "xyz"}}, "metadata.traceId"),
        ({"jobType": "diag.echo", "payload": {}, "idempotencyKey": ""}, "idempotencyKey"),
    ],
)
def test_schema_violation_is_422_naming_the_field(client: FlaskClient, body: dict, field: str) -> None:
    response = client.post("/v1/jobs", json=body, headers=auth("acme"))
    problem = assert_problem(response, 422, "validation-error")
    assert field in problem["errors"], problem


@pytest.mark.parametrize("path", ["/v1/jobs?stat=dead", "/v1/jobs?state=dead&pageSize=5", "/v1/dead-letters?lim=5"])
def test_an_unknown_query_parameter_is_422_naming_it(client: FlaskClient, path: str) -> None:
    # given a listing asked with a parameter it does not have (a misspelt filter)
    response = client.get(path, headers=auth("acme"))
    # then it is refused naming the parameter, not answered as if there were no filter
    problem = assert_problem(response, 422, "validation-error")
    unknown = path.rsplit("&", 1)[-1].split("?")[-1].split("=")[0]
    assert unknown in problem["errors"], problem


def test_top_level_array_is_422(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json=[1, 2], headers=auth("acme"))
    assert_problem(response, 422, "validation-error")


def test_unknown_job_type_is_422_at_submit(live_client: FlaskClient) -> None:
    response = live_client.post("/v1/jobs", json={"jobType": "no.such.handler", "payload": {}}, headers=auth("acme"))
    body = assert_problem(response, 422, "unknown-job-type")
    assert "jobType" in body["errors"]


def test_tenant_id_of_another_tenant_is_403(live_client: FlaskClient) -> None:
    response = live_client.post(
        "/v1/jobs",
        json={"jobType": "diag.echo", "payload": {}, "tenantId": "globex"},
        headers=auth("acme"),
    )
    # a schema-valid tenantId that is not the key's own is a permission question
    body = assert_problem(response, 403, "tenant-mismatch")
    assert "tenantId" in body["errors"]


def test_unknown_route_and_method_are_problems(client: FlaskClient) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not-found")
    refused = client.delete("/healthz")
    assert_problem(refused, 405, "method-not-allowed")
    assert refused.headers["Allow"] == "GET, HEAD, OPTIONS"  # RFC 9110: a 405 names what is allowed
    refused = client.put("/v1/jobs", headers=auth("acme"))
    assert_problem(refused, 405, "method-not-allowed")
    assert set(refused.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"maxRetries": "2"}, "options.maxRetries"),
        ({"maxRetries": True}, "options.maxRetries"),
        ({"maxRetries": 2.0}, "options.maxRetries"),
        ({"delaySeconds": "1"}, "options.delaySeconds"),
        ({"priority": False}, "options.priority"),
    ],
)
def test_options_take_json_types_only(client: FlaskClient, options: dict, field: str) -> None:
    # given an option whose value is the wrong JSON type, though Python could coerce it
    body = {"jobType": "diag.echo", "payload": {}, "options": options}
    # when it is submitted, then it is refused naming the option
    problem = assert_problem(client.post("/v1/jobs", json=body, headers=auth("acme")), 422, "validation-error")
    assert field in problem["errors"], problem


def test_bulk_replay_dry_run_must_be_a_boolean(client: FlaskClient) -> None:
    response = client.post("/v1/dead-letters/replay", json={"dryRun": 0}, headers=auth("acme"))
    problem = assert_problem(response, 422, "validation-error")
    assert "dryRun" in problem["errors"]


def test_bulk_replay_with_deadafter_later_than_deadbefore_is_refused_naming_it(client: FlaskClient) -> None:
    # given a window whose start is after its end (the two swapped)
    body = {"deadAfter": "2026-01-02T00:00:00Z", "deadBefore": "2026-01-01T00:00:00Z"}
    # when it is sent, for real or as a dry run, then it is refused naming deadAfter
    for dry_run in (False, True):
        response = client.post("/v1/dead-letters/replay", json={**body, "dryRun": dry_run}, headers=auth("acme"))
        problem = assert_problem(response, 422, "validation-error")
        assert "deadAfter" in problem["errors"], problem
    # and a window of one instant is still a window
    same = {"deadAfter": body["deadBefore"], "deadBefore": body["deadBefore"], "dryRun": True}
    assert client.post("/v1/dead-letters/replay", json=same, headers=auth("acme")).status_code == 200


def test_bulk_replay_without_a_body_is_refused_as_the_document_says(client: FlaskClient) -> None:
    # given the document's word that POST /v1/dead-letters/replay takes a body
    doc = client.get("/openapi.json").get_json()
    assert doc["paths"]["/v1/dead-letters/replay"]["post"]["requestBody"]["required"] is True
    # when it is sent without one, then it is refused naming the body
    body = assert_problem(client.post("/v1/dead-letters/replay", headers=auth("acme")), 422, "validation-error")
    assert "body" in body["errors"]
    # and an explicit (dry-run) filter is answered
    assert client.post("/v1/dead-letters/replay", json={"dryRun": True}, headers=auth("acme")).status_code == 200


def test_the_bulk_replay_path_allows_post_only(client: FlaskClient) -> None:
    # given /v1/dead-letters/replay, which is not a dead letter called "replay"
    # when it is read, then the method is refused and Allow names POST
    refused = client.get("/v1/dead-letters/replay", headers=auth("acme"))
    assert_problem(refused, 405, "method-not-allowed")
    assert refused.headers["Allow"] == "OPTIONS, POST"
    allowed = client.options("/v1/dead-letters/replay", headers=auth("acme")).headers["Allow"]
    assert set(allowed.split(", ")) == {"OPTIONS", "POST"}


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("post", "/v1/jobs", '{"jobType": "diag.echo", "payload": {"n": %s}}'),
        ("post", "/v1/jobs", '{"jobType": "diag.echo", "payload": {}, "options": {"maxRetries": %s}}'),
        ("post", "/v1/batches", '{"jobs": [{"jobType": "diag.echo", "payload": {"n": %s}}]}'),
        ("post", "/v1/dead-letters/replay", '{"dryRun": true, "n": %s}'),
        ("put", "/v1/handlers/review.digits", '{"url": "https://example.com/", "timeoutSeconds": %s}'),
    ],
)
def test_a_number_longer_than_python_converts_is_malformed_not_a_500(
    client: FlaskClient, redis: Redis, method: str, path: str, raw: str
) -> None:
    # given a JSON body with an integer of 5000 digits (Python's int() stops at 4300)
    body = raw % ("1" * 5000)
    before = set(redis.scan_iter(count=1000))
    # when it is sent
    response = getattr(client, method)(path, data=body, headers=auth("acme"), content_type="application/json")
    # then it is a 400 problem saying what is wrong with the JSON, and nothing was written
    problem = assert_problem(response, 400, "malformed-request")
    assert "digits" in problem["detail"], problem
    assert set(redis.scan_iter(count=1000)) - before == set()


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("post", "/v1/jobs", '{"jobType": "diag.echo", "payload": {"n": %s}}'),
        ("post", "/v1/jobs", '{"jobType": "diag.echo", "payload": {}, "metadata": {"n": -%s}}'),
        ("post", "/v1/batches", '{"jobs": [{"jobType": "diag.echo", "payload": {"n": %s}}]}'),
        ("post", "/v1/jobs/some-job/complete", '{"result": {"n": %s}}'),
    ],
)
def test_a_number_past_a_doubles_range_is_malformed_not_written_back_as_infinity(
    client: FlaskClient, redis: Redis, method: str, path: str, raw: str
) -> None:
    # given a live diag.echo and a JSON body holding 1e400 (valid JSON grammar, but past a
    # double's range: Python reads it as inf, and would write every document showing it
    # with the non-JSON literal Infinity)
    announce(redis, ["diag.echo"], 600)
    body = raw % "1e400"
    # (keys, not their count: a key an earlier test left expiring may go meanwhile)
    before = set(redis.scan_iter(count=1000))
    # when it is sent
    headers = auth("acme") if "complete" not in path else {"Authorization": "Bearer some-token"}
    response = getattr(client, method)(path, data=body, headers=headers, content_type="application/json")
    # then it is a 400 problem naming the number, and nothing was written
    problem = assert_problem(response, 400, "malformed-request")
    assert "out of range" in problem["detail"], problem
    assert set(redis.scan_iter(count=1000)) - before == set()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/jobs?state=queued&state=dead", "state"),
        ("/v1/jobs?limit=1&limit=50", "limit"),
        ("/v1/dead-letters?limit=1&limit=50", "limit"),
        ("/v1/jobs?jobType=diag.echo&jobType=diag.fail", "jobType"),
        ("/v1/jobs?limit=5_0", "limit"),
        ("/v1/dead-letters?limit=%2B5", "limit"),
        ("/v1/jobs?limit=%EF%BC%95", "limit"),
    ],
)
def test_a_query_parameter_given_twice_or_not_an_ascii_integer_is_422_naming_it(
    client: FlaskClient, path: str, field: str
) -> None:
    # given a listing whose parameter is ambiguous: sent twice (which one filters?) or an
    # integer only Python's int() reads ("5_0" as 50, "+5", a fullwidth digit)
    response = client.get(path, headers=auth("acme"))
    # then it is refused naming the parameter, not answered as if one value had been sent
    problem = assert_problem(response, 422, "validation-error")
    assert field in problem["errors"], problem


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("put", "/v1/handlers/review.media", auth("acme")),
        ("post", "/v1/jobs/some-job/complete", {"Authorization": "Bearer some-token"}),
        ("post", "/v1/jobs/some-job/heartbeat", {"Authorization": "Bearer some-token"}),
    ],
)
def test_a_body_that_is_not_json_is_415_at_every_endpoint_taking_one(
    client: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    # given a JSON body sent as text/plain (its parser would not read it: the body seems absent)
    body = '{"url": "https://example.com/", "result": 1, "extendSeconds": 5}'
    # when it is sent to an endpoint that takes a body
    response = getattr(client, method)(path, data=body, headers=headers, content_type="text/plain")
    # then it is a 415 saying so, not a 422 about fields that were sent
    assert_problem(response, 415, "unsupported-media-type")


def test_a_chunked_registration_over_its_cap_is_413_without_reading_it_all(client: FlaskClient) -> None:
    # given a registration body of 2 MiB sent chunked (no Content-Length to check up front)
    body = b'{"url": "https://example.com/", "headers": {"X-Pad": "' + b"p" * (2 * 1024 * 1024) + b'"}}'
    # when it is sent
    response = client.put(
        "/v1/handlers/review.chunked",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={**auth("acme"), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    # then it is refused at the cap (1 MiB), as a POST body is
    assert_problem(response, 413, "payload-too-large")
