"""``POST /v1/jobs`` answered before Flask (``pulse_api.fast_submit``) answers exactly as the
Flask path does: the same status line, headers in the same order, body and refusal count,
whether it serves the request itself, hands a refusal to Flask's error handling, or
leaves the request to Flask altogether."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from werkzeug.test import Client

from pulse_api.app import create_app
from pulse_api.fast_submit import FastSubmit
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.telemetry import metrics
from pulse_core.tenants import TenantsConfig, hash_api_key

JOB_TYPE = "fastpath.echo"
#: Each path has tenants of its own, so limits and idempotency keys never meet.
PATHS = ("fast", "full")  # (names of one length: the Content-Length compares)
KINDS = {
    "plain": {},
    "tight": {"rate_limit": "1/minute"},
    "small": {"max_payload_bytes": 256},
    "traced": {"rate_limit": "1/minute"},
}
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def tenant(path: str, kind: str) -> str:
    return f"{path}-{kind}"


def key(path: str, kind: str) -> str:
    return f"{tenant(path, kind)}-secret-key"


@pytest.fixture(scope="module")
def app(isolated_settings_module: Settings, redis: Redis) -> Flask:
    announce(redis, [JOB_TYPE], 3600)
    tenants = {
        tenant(path, kind): {"api_key_sha256": [hash_api_key(key(path, kind))], **extra}
        for path in PATHS
        for kind, extra in KINDS.items()
    }
    config = TenantsConfig.from_mapping({"defaults": {"rate_limit": "1000/second"}, "tenants": tenants})
    return create_app(isolated_settings_module, tenants=config)


@pytest.fixture(scope="module")
def isolated_settings_module(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, default_queue="t-fast-submit")


class Paths:
    """One client per path: through ``FastSubmit``, and straight into Flask; and how many
    requests of the first reached Flask."""

    def __init__(self, app: Flask) -> None:
        fast = app.wsgi_app
        assert isinstance(fast, FastSubmit)
        self.reached_flask = 0
        flask_wsgi = fast.flask_wsgi

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.reached_flask += 1
            return flask_wsgi(environ, start_response)

        self.fast = Client(FastSubmit(app, counted))
        self.flask = Client(flask_wsgi)

    def both(self, kind: str = "plain", **request: Any) -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
        """The same request on each path (with that path's tenant of ``kind``): both answers,
        normalized, and whether the fast one reached Flask (1) or not (0)."""
        answers = []
        before = self.reached_flask
        for path, client in (("fast", self.fast), ("full", self.flask)):
            headers = {"Authorization": f"Bearer {key(path, kind)}", **request.get(f"headers_{path}", {})}
            headers.update(request.get("headers", {}))
            args = {k: v for k, v in request.items() if not k.startswith("headers")}
            response = client.post("/v1/jobs", headers=headers, **args)
            answers.append(_normalized(response.status, list(response.headers.items()), response.get_data()))
        return answers[0], answers[1], self.reached_flask - before


def _normalized(status: str, headers: list[tuple[str, str]], body: bytes) -> tuple[Any, ...]:
    text = _TIME.sub("<time>", _ID.sub("<id>", body.decode()))
    for path in PATHS:
        text = text.replace(f'"{path}-', '"<path>-')
    return status, [(name, _ID.sub("<id>", value)) for name, value in headers], text


@pytest.fixture
def paths(app: Flask) -> Iterator[Paths]:
    yield Paths(app)


def body(**fields: Any) -> dict[str, Any]:
    return {"jobType": JOB_TYPE, "payload": {"n": 1, "text": "héllo"}, **fields}


SERVED_BEFORE_FLASK = {
    "plain": {"json": body()},
    "metadata, options": {
        "json": body(metadata={"traceId": "ab" * 16, "team": "x"}, options={"maxRetries": 2, "priority": 7})
    },
    "delayed": {"json": body(options={"delaySeconds": 30})},
    "key in the body": {"json": body(idempotencyKey="body-key-1")},
}


@pytest.mark.parametrize("request_", SERVED_BEFORE_FLASK.values(), ids=SERVED_BEFORE_FLASK.keys())
def test_a_plain_submit_is_answered_before_flask_as_flask_answers_it(paths: Paths, request_: dict[str, Any]) -> None:
    # given a submit Flask's path would take to the submission
    # when it is sent through the fast path and through Flask
    fast, flask, reached = paths.both(**request_)
    # then the fast path answered it itself, with Flask's answer
    assert reached == 0
    assert fast[0] == "202 ACCEPTED"
    assert fast == flask


def test_an_idempotent_replay_is_answered_before_flask_as_flask_answers_it(paths: Paths) -> None:
    # given a submit with an Idempotency-Key, accepted on each path
    first = paths.both(json=body(), headers={"Idempotency-Key": "replay-1"})
    # when the same submit comes again
    fast, flask, reached = paths.both(json=body(), headers={"Idempotency-Key": "replay-1"})
    # then both answer the replay (200, Idempotent-Replayed) alike, the fast one before Flask
    assert first[0] == first[1] and first[2] == 0
    assert fast[0] == "200 OK" and ("Idempotent-Replayed", "true") in fast[1]
    assert reached == 0
    assert fast == flask


def _rejected(tenant_id: str, reason: str) -> float:
    return metrics.REJECTED.labels(tenant_id, JOB_TYPE, reason)._value.get()


def test_a_rate_limited_submit_is_refused_as_flask_refuses_it(paths: Paths) -> None:
    # given each path's tight tenant (1/minute) with its one submit spent
    assert paths.both("tight", json=body())[2] == 0
    counted = {path: _rejected(tenant(path, "tight"), "rate_limit") for path in PATHS}
    # when it submits again
    fast, flask, _ = paths.both("tight", json=body())
    # then the refusal (problem document, Retry-After, RateLimit-*) is Flask's on both, counted once each
    assert fast[0] == "429 TOO MANY REQUESTS"
    assert fast == flask
    assert {path: _rejected(tenant(path, "tight"), "rate_limit") - counted[path] for path in PATHS} == {
        "fast": 1,
        "full": 1,
    }


REFUSED_AT_ADMISSION = {
    "unknown jobType": {"json": body(jobType="fastpath.nobody-runs-this")},
    "idempotency key reused": {"json": body(payload={"other": True}), "headers": {"Idempotency-Key": "replay-1"}},
    "keys disagree": {"json": body(idempotencyKey="a"), "headers": {"Idempotency-Key": "b"}},
    "another tenant's id": {"json": body(tenantId="someone-else")},
    "retries over the cap": {"json": body(options={"maxRetries": 10_000})},
}


@pytest.mark.parametrize("request_", REFUSED_AT_ADMISSION.values(), ids=REFUSED_AT_ADMISSION.keys())
def test_a_submit_refused_after_the_checks_is_answered_as_flask_answers_it(
    paths: Paths, request_: dict[str, Any]
) -> None:
    # given a well-formed submit that the submission refuses
    paths.both(json=body(), headers={"Idempotency-Key": "replay-1"})  # (the reused key's first job)
    # when it is sent through both paths
    fast, flask, _ = paths.both(**request_)
    # then the problem document and headers are the same
    assert fast[0][:3] in {"403", "422"}
    assert fast == flask


LEFT_TO_FLASK = {
    "not JSON": {"data": b"{nope", "content_type": "application/json"},
    "NaN": {"data": b'{"jobType": "fastpath.echo", "payload": {"n": NaN}}', "content_type": "application/json"},
    "not UTF-8": {"data": b'{"jobType": "\xff"}', "content_type": "application/json"},
    "another media type": {"data": json.dumps(body()), "content_type": "text/plain"},
    "a charset": {"data": json.dumps(body()), "content_type": "application/json; charset=utf-8"},
    "no payload": {"json": {"jobType": JOB_TYPE}},
    "a list": {"json": [body()]},
    "too large": {"json": body(payload={"x": "y" * 400}), "kind": "small"},
    "empty": {"data": b"", "content_type": "application/json"},
    "no key": {"json": body(), "headers_fast": {"Authorization": ""}, "headers_full": {"Authorization": ""}},
    "an unknown key": {
        "json": body(),
        "headers_fast": {"Authorization": "Bearer nope"},
        "headers_full": {"Authorization": "Bearer nope"},
    },
    "a traceparent": {
        "json": body(),
        "headers": {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
    },
}


@pytest.mark.parametrize("request_", LEFT_TO_FLASK.values(), ids=LEFT_TO_FLASK.keys())
def test_any_other_submit_is_left_to_flask(paths: Paths, request_: dict[str, Any]) -> None:
    # given a request the fast path does not take (or doubts)
    request = dict(request_)
    kind = request.pop("kind", "plain")
    # when it is sent through both paths
    fast, flask, reached = paths.both(kind, **request)
    # then Flask answered it on both, alike
    assert reached == 1
    assert fast == flask


def test_other_routes_go_to_flask(paths: Paths) -> None:
    # given requests to other routes and methods
    # when they are sent through the fast path, then each reaches Flask
    paths.fast.get("/healthz")
    paths.fast.get("/v1/jobs", headers={"Authorization": f"Bearer {key('fast', 'plain')}"})
    paths.fast.post("/v1/jobs/", json=body())
    assert paths.reached_flask == 3


def _span_shapes(spans: Any) -> list[tuple[Any, ...]]:
    shapes = []
    for span in spans:
        attributes = {k: _ID.sub("<id>", str(v)) for k, v in (span.attributes or {}).items()}
        shapes.append((span.name, span.kind, span.status.status_code, sorted(attributes.items()), len(span.events)))
    return sorted(shapes, key=str)


def test_with_tracing_on_both_paths_record_the_same_spans(isolated_settings_module: Settings, redis: Redis) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pulse_api import observability
    from pulse_core.telemetry import tracing

    # given tracing on, and an app traced as gunicorn's post_fork traces it
    announce(redis, [JOB_TYPE], 3600)
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("pulse-test", exporter=exporter, set_global=False)
    try:
        app = create_app(
            isolated_settings_module,
            tenants=TenantsConfig.from_mapping(
                {
                    "tenants": {
                        tenant(path, kind): {"api_key_sha256": [hash_api_key(key(path, kind))], **extra}
                        for path in PATHS
                        for kind, extra in KINDS.items()
                    }
                }
            ),
        )
        observability.instrument_tracing(app)
        paths = Paths(app)
        recorded = {}
        for path, client in (("fast", paths.fast), ("full", paths.flask)):
            exporter.clear()
            # when a plain submit, one with a traceId, and one over the rate limit go through the path
            plain, traced = ({"Authorization": f"Bearer {key(path, kind)}"} for kind in ("plain", "traced"))
            statuses = [
                client.post("/v1/jobs", json=body(), headers=plain).status_code,
                client.post("/v1/jobs", json=body(metadata={"traceId": "cd" * 16}), headers=plain).status_code,
                client.post("/v1/jobs", json=body(), headers=traced).status_code,
                client.post("/v1/jobs", json=body(), headers=traced).status_code,
            ]
            assert statuses == [202, 202, 202, 429]
            recorded[path] = _span_shapes(exporter.get_finished_spans())
        # then the spans (names, kinds, statuses, attributes, events) are the same on both,
        # the fast path's all made before Flask (the refusal's by Flask's error handling)
        assert paths.reached_flask == 0
        names = [shape[0] for shape in recorded["fast"]]
        assert names.count("POST /v1/jobs") == 4 and "pulse.submit" in names
        assert recorded["fast"] == recorded["full"]
    finally:
        tracing.shutdown_tracing()


def test_the_fast_path_knows_every_hook_a_submit_passes(app: Flask) -> None:
    # given the hooks Flask runs around POST /v1/jobs (the app's and the jobs blueprint's)
    hooks = {
        kind: sorted(f.__qualname__ for scope in (None, "jobs") for f in getattr(app, kind).get(scope, []))
        for kind in ("before_request_funcs", "after_request_funcs", "teardown_request_funcs", "url_value_preprocessors")
    }
    # then they are the ones fast_submit does the work of (tracing's are added after the fork:
    # the tracing test above); a new hook must be done there too, or the fast path left
    assert hooks == {
        "before_request_funcs": ["_guard"],
        "after_request_funcs": ["_count_refusal", "_rate_limit_headers"],
        "teardown_request_funcs": ["_clear_log_context"],
        "url_value_preprocessors": [],
    }


def test_a_failure_building_the_answer_is_answered_as_flask_answers_it(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job document that fails to build after the job was admitted (no known cause:
    # the failure is put in by hand, on both paths)
    def broken(job: Any) -> dict[str, Any]:
        raise RuntimeError("job document")

    monkeypatch.setattr("pulse_api.fast_submit.job_body", broken)
    monkeypatch.setattr("pulse_api.jobs.job_body", broken)
    # when a plain submit is sent through both paths
    fast, flask, reached = paths.both(json=body())
    # then the fast path's answer is Flask's own: its 500 problem document, headers and all
    assert fast[0].startswith("500")
    assert fast == flask
    assert reached == 0


def test_a_failure_after_the_admission_answers_with_the_admissions_rate_limit_standing(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job document that fails to build some milliseconds after the job was admitted
    # (at 1,000 a second the limit frees a slot every millisecond)
    def slow_and_broken(job: Any) -> dict[str, Any]:
        time.sleep(0.02)
        raise RuntimeError("job document")

    monkeypatch.setattr("pulse_api.fast_submit.job_body", slow_and_broken)
    monkeypatch.setattr("pulse_api.jobs.job_body", slow_and_broken)
    # when a plain submit is sent through both paths
    fast, flask, _ = paths.both(json=body())
    # then each 500 says where the limit stood when its job was counted (one slot taken), as
    # its 202 would have, not how far it had freed again by the time the answer failed
    for status, headers, _text in (fast, flask):
        assert status.startswith("500")
        assert dict(headers)["RateLimit-Remaining"] == "999", headers
