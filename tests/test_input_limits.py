"""Bad input gets a clear 4xx problem and enqueues nothing."""

from __future__ import annotations

import io
import json

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api.schemas import MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_METADATA_BYTES
from pulse_core.store.job_types import announce
from tests.invariants import pending_by_tenant
from tests.support import auth, waiting_messages


def nested(depth: int) -> dict:
    node: dict = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"n": node}
    return node


def raw(client: FlaskClient, data: bytes | str, content_type: str = "application/json", **kw):
    return client.post("/v1/jobs", data=data, content_type=content_type, **kw)


JOB = {"jobType": "diag.echo", "payload": {"n": 1}}
CASES = [
    # (name, request, status, problem type, field)
    ("malformed json", lambda c: raw(c, '{"jobType": ', headers=auth("small")), 400, "malformed-request", None),
    (
        "json nested past the parser",
        lambda c: raw(c, "[" * 100_000 + "]" * 100_000, headers=auth("acme")),
        400,
        "malformed-request",
        None,
    ),
    # NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them
    (
        "NaN in payload",
        lambda c: raw(c, '{"jobType": "diag.echo", "payload": {"x": NaN}}', headers=auth("acme")),
        400,
        "malformed-request",
        None,
    ),
    (
        "Infinity in metadata",
        lambda c: raw(c, '{"jobType": "diag.echo", "payload": {}, "metadata": {"a": -Infinity}}', headers=auth("acme")),
        400,
        "malformed-request",
        None,
    ),
    # a lone surrogate is valid JSON but not Unicode text: it cannot be fingerprinted or stored
    (
        "lone surrogate in a payload with an idempotency key",
        lambda c: raw(
            c,
            '{"jobType": "diag.echo", "payload": {"x": "\\ud800"}, "idempotencyKey": "surrogate-1"}',
            headers=auth("acme"),
        ),
        422,
        "validation-error",
        "payload",
    ),
    (
        "lone surrogate in a payload with an Idempotency-Key header",
        lambda c: raw(
            c,
            '{"jobType": "diag.echo", "payload": {"\\udc00": 1}}',
            headers={**auth("acme"), "Idempotency-Key": "surrogate-2"},
        ),
        422,
        "validation-error",
        "payload",
    ),
    (
        "lone surrogate as the idempotency key",
        lambda c: raw(c, '{"jobType": "diag.echo", "payload": {}, "idempotencyKey": "\\ud800"}', headers=auth("acme")),
        422,
        "validation-error",
        "idempotencyKey",
    ),
    (
        "form body",
        lambda c: raw(c, "jobType=diag.echo", "application/x-www-form-urlencoded", headers=auth("small")),
        415,
        "unsupported-media-type",
        None,
    ),
    (
        "no content type",
        lambda c: c.post("/v1/jobs", data=b"{}", headers=auth("small")),
        415,
        "unsupported-media-type",
        None,
    ),
    (
        "body over max_payload_bytes",
        lambda c: c.post("/v1/jobs", json={**JOB, "payload": {"x": "y" * 2000}}, headers=auth("small")),
        413,
        "payload-too-large",
        None,
    ),
    (
        "chunked body over max_payload_bytes",
        lambda c: c.post(
            "/v1/jobs",
            input_stream=io.BytesIO(json.dumps({**JOB, "payload": {"x": "y" * 5000}}).encode()),
            content_type="application/json",
            headers={**auth("small"), "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        ),
        413,
        "payload-too-large",
        None,
    ),
    (
        "payload nested too deep",
        lambda c: c.post("/v1/jobs", json={**JOB, "payload": nested(MAX_JSON_DEPTH + 1)}, headers=auth("acme")),
        422,
        "validation-error",
        "payload",
    ),
    (
        "payload with too many keys",
        lambda c: c.post(
            "/v1/jobs", json={**JOB, "payload": {f"k{i}": i for i in range(MAX_JSON_KEYS + 1)}}, headers=auth("acme")
        ),
        422,
        "validation-error",
        "payload",
    ),
    (
        "metadata too large",
        lambda c: c.post(
            "/v1/jobs", json={**JOB, "metadata": {"note": "x" * MAX_METADATA_BYTES}}, headers=auth("acme")
        ),
        422,
        "validation-error",
        "metadata",
    ),
    (
        "metadata value not a scalar",
        lambda c: c.post("/v1/jobs", json={**JOB, "metadata": {"tags": ["a"]}}, headers=auth("acme")),
        422,
        "validation-error",
        "metadata.tags",
    ),
    # Python's ``$`` also matches before a trailing newline; the document's pattern does not
    (
        "jobType with a trailing newline",
        lambda c: c.post("/v1/jobs", json={**JOB, "jobType": "diag.echo\n"}, headers=auth("acme")),
        422,
        "validation-error",
        "jobType",
    ),
    (
        "unknown jobType",
        lambda c: c.post("/v1/jobs", json={**JOB, "jobType": "no.such.type"}, headers=auth("acme")),
        422,
        "unknown-job-type",
        "jobType",
    ),
]


@pytest.mark.parametrize(("send", "status", "slug", "field"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_refusal_is_a_problem_and_leaves_queue_and_store_unchanged(
    client: FlaskClient, redis: Redis, send, status: int, slug: str, field: str | None
) -> None:
    # given the queue and every tenant's job index as they are
    announce(redis, ["diag.echo"], 600)
    before = (
        waiting_messages(redis, "pulse"),
        redis.keys("pulse:job:*").__len__(),
        pending_by_tenant(redis),
    )
    # when the bad request is sent
    response = send(client)
    # then it is the expected problem document, naming the field where there is one
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"].endswith("/" + slug)
    if field:
        assert field in problem["errors"], problem
    # and nothing was recorded or enqueued
    after = (
        waiting_messages(redis, "pulse"),
        redis.keys("pulse:job:*").__len__(),
        pending_by_tenant(redis),
    )
    assert after == before


def test_a_body_just_under_the_cap_is_accepted(client: FlaskClient, redis: Redis) -> None:
    announce(redis, ["diag.echo"], 600)
    filler = "y" * (1024 - len(json.dumps({**JOB, "payload": {"x": ""}})))
    response = client.post("/v1/jobs", json={**JOB, "payload": {"x": filler}}, headers=auth("small"))
    assert response.status_code == 202, response.get_json()
