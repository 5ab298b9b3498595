"""One trace from the HTTP request to the handler, seen by one in-memory span exporter.

The API runs in the test process (Flask test client) and so does the worker: a
real Celery worker (``celery.contrib.testing.worker``, solo pool) consuming the
real messages from the test Redis, so one exporter sees both sides.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from redis import Redis

from pulse_api import create_app
from pulse_core.broker.celery_app import create_celery
from pulse_core.handlers import load_handler_modules, registry
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.telemetry import tracing
from pulse_worker.runtime import WorkerRuntime
from pulse_worker.task import install
from tests.support import auth, wait_for, wait_for_state

QUEUE = "t-tracing"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(settings: Settings, redis: Redis) -> Iterator[tuple[FlaskClient, InMemorySpanExporter]]:
    """Tracing on (in-memory exporter), an API and an in-process worker on a queue of their own."""
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("pulse-test", exporter=exporter, set_global=False)
    local = replace(settings, default_queue=QUEUE)
    load_handler_modules(local.handler_modules)
    announce(redis, registry.job_types(), 300)
    worker_app = create_celery(local, main="pulse-traced-worker")
    install(worker_app, WorkerRuntime.build(local, registry))
    client = create_app(local).test_client()
    try:
        with start_worker(worker_app, pool="solo", perform_ping_check=False, queues=[QUEUE], shutdown_timeout=30):
            yield client, exporter
    finally:
        tracing.shutdown_tracing()


def _run(client: FlaskClient, exporter: InMemorySpanExporter, **request: Any) -> tuple[dict, list]:
    """Submit a diag.echo job, wait until its worker span ended; the job and all spans."""
    exporter.clear()
    body = {"jobType": "diag.echo", "payload": {"word": "hello"}, **request.pop("body", {})}
    response = client.post("/v1/jobs", json=body, headers={**auth("acme"), **request})
    assert response.status_code == 202, response.get_json()
    job = wait_for_state(client, "acme", response.get_json()["jobId"], {"succeeded", "dead"})
    assert job["state"] == "succeeded"

    def worker_span_ended() -> list[ReadableSpan] | None:
        spans = list(exporter.get_finished_spans())
        return spans if any(s.kind is SpanKind.CONSUMER for s in spans) else None

    spans = wait_for(worker_span_ended)
    # the status polls above are requests of their own, each its own trace
    return job, [s for s in spans if not s.name.startswith("GET ")]


def _one(spans: list[ReadableSpan], *, name: str | None = None, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if (name is None or s.name == name) and (kind is None or s.kind is kind)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


# First in this module: the module's tracing fixture is not set up yet.
def test_with_tracing_off_the_job_still_takes_the_callers_trace_id(client: FlaskClient, redis: Redis) -> None:
    # given tracing off (no OTEL variables) and a caller's traceparent
    assert not tracing.tracing_enabled()
    announce(redis, ["diag.echo"], 60)
    headers = {**auth("acme"), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    # when it submits a job
    response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=headers)
    # then the job's traceId is the caller's, so its logs can still be joined to the caller
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["traceId"] == CALLER_TRACE
    # and without a traceparent, metadata.traceId is kept, and otherwise a fresh id is made
    wanted = "0af7651916cd43dd8448eb211c80319c"
    body = {"jobType": "diag.echo", "payload": {}, "metadata": {"traceId": wanted}}
    assert client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["traceId"] == wanted
    fresh = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme")).get_json()[
        "traceId"
    ]
    assert len(fresh) == 32 and fresh not in {wanted, CALLER_TRACE}


def test_the_api_span_and_the_worker_span_are_one_trace(
    traced: tuple[FlaskClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    # when a job is submitted with no trace context and runs
    job, spans = _run(client, exporter)
    # then every span, from the HTTP request to the handler's own, is in one trace,
    # the job's traceId
    http = _one(spans, name="POST /v1/jobs")
    publish = _one(spans, kind=SpanKind.PRODUCER)
    run = _one(spans, kind=SpanKind.CONSUMER)
    attempt = _one(spans, name="job diag.echo")
    handler = _one(spans, name="diag.echo.copy")
    assert {format_trace_id(s.context.trace_id) for s in spans} == {job["traceId"]}
    # and each is the child of the one before: HTTP -> publish -> run -> job -> handler
    chain = [http, publish, run, attempt, handler]
    for parent, child in itertools.pairwise(chain):
        assert _parent_id(child) == parent.context.span_id, (parent.name, child.name)
    assert http.parent is None
    # and the attempt's span names the job, not its payload
    assert attempt.attributes is not None
    assert attempt.attributes["pulse.job_id"] == job["jobId"]
    assert attempt.attributes["pulse.tenant_id"] == "acme"
    assert attempt.attributes["pulse.attempt"] == 1
    assert not any("hello" in str(s.attributes) for s in spans)


def test_a_traceparent_on_the_request_is_continued(
    traced: tuple[FlaskClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    # given a caller's W3C trace context
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    # when it submits a job with it
    job, spans = _run(client, exporter, traceparent=traceparent)
    # then the job carries the caller's trace id, the HTTP span is the child of the
    # caller's span, and the worker's spans are in the same trace
    assert job["traceId"] == CALLER_TRACE
    http = _one(spans, name="POST /v1/jobs")
    assert http.parent is not None and format_span_id(http.parent.span_id) == CALLER_SPAN
    assert {format_trace_id(s.context.trace_id) for s in spans} == {CALLER_TRACE}


def test_metadata_trace_id_is_honoured_without_a_traceparent(
    traced: tuple[FlaskClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    wanted = "0af7651916cd43dd8448eb211c80319c"
    # when a job names its trace in metadata, with no traceparent header
    job, spans = _run(client, exporter, body={"metadata": {"traceId": wanted}})
    # then the job, its submission, its publish and its run are in that trace,
    # and the submission links back to the HTTP request's own span
    assert job["traceId"] == wanted
    submit = _one(spans, name="pulse.submit")
    http = _one(spans, name="POST /v1/jobs")
    rest = [
        _one(spans, kind=SpanKind.PRODUCER),
        _one(spans, kind=SpanKind.CONSUMER),
        _one(spans, name="job diag.echo"),
        _one(spans, name="diag.echo.copy"),
    ]
    for span in [submit, *rest]:
        assert format_trace_id(span.context.trace_id) == wanted, span.name
    assert [link.context.span_id for link in submit.links] == [http.context.span_id]


def test_an_unsampled_request_records_no_span_and_its_job_stays_unsampled(
    traced: tuple[FlaskClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    # given a caller's trace that is not sampled (flags 00: the parent-based sampler follows it)
    headers = {**auth("acme"), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
    # when it submits a job, which runs
    response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["traceId"] == CALLER_TRACE
    assert wait_for_state(client, "acme", response.get_json()["jobId"], {"succeeded", "dead"})["state"] == "succeeded"
    # (then a sampled job through the same one-at-a-time worker: once its run's span has
    # ended, the first job's would have too)
    second = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme")).get_json()

    def second_run_ended() -> list[ReadableSpan] | None:
        spans = list(exporter.get_finished_spans())
        ran = [s for s in spans if s.kind is SpanKind.CONSUMER]
        return spans if any(format_trace_id(s.context.trace_id) == second["traceId"] for s in ran) else None

    spans = wait_for(second_run_ended)
    # then no span of the caller's trace was recorded, in the API or in the worker: the
    # message carried the trace unsampled (without it the worker would start a sampled trace)
    assert not [s.name for s in spans if format_trace_id(s.context.trace_id) == CALLER_TRACE]
    assert len([s for s in spans if s.kind is SpanKind.CONSUMER]) == 1
