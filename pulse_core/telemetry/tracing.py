"""Tracing with OpenTelemetry: one trace from the HTTP request to the handler.

On when the standard OTel variables name an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and
neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``); off
otherwise, and then every span helper here is a shared no-op. The exporter reads
the rest of its settings (headers, protocol, timeout) from the same variables.

The API makes one server span per request itself (``start_server_span``: the
W3C context read from ``traceparent``, a few attributes, nothing else; the
generic Flask/WSGI instrumentation spent more per request than the submission's
Redis round trip), a producer span whose ``traceparent`` rides in the message
(``publish_context``) and, for ``metadata.traceId``, a ``submit`` span. The
Celery instrumentation carries the context across the broker for messages kombu
publishes, and makes the worker's spans; Pulse adds a ``job`` span around each
attempt and the handler's own spans (``ctx.span``). An unsampled request (a
ratio sampler said no) builds no span beyond the SDK's non-recording one: its
message carries the decision (``traceparent`` flags 00), so the worker does not
sample it either. Providers hold threads, so each process calls
``configure_tracing`` after it forked (gunicorn worker, prefork child).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pulse_core.jobs import Job, new_trace_id

TRACER_NAME = "pulse"
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_W3C = TraceContextTextMapPropagator()
_NOOP: AbstractContextManager[Any] = contextlib.nullcontext()


class _Tracing:
    """This process's tracing state: ``None`` provider means tracing is off."""

    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None
    celery_instrumentor: Any = None


_state = _Tracing()
#: The trace id chosen for the current submission when tracing is off.
_submit_trace: ContextVar[str | None] = ContextVar("pulse_submit_trace", default=None)


def otlp_configured(env: Mapping[str, str]) -> bool:
    """Whether the standard OTel variables ask for an OTLP trace exporter."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return any(env.get(name) for name in _ENDPOINT_VARS)


def configure_tracing(
    service_name: str,
    env: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider | None:
    """Turn tracing on for this process, or leave it off; call once, after forking.

    ``exporter`` (tests, benchmarks) replaces the OTLP exporter and is called
    synchronously. Returns the provider, or ``None`` when tracing stays off.
    """
    env = os.environ if env is None else env
    if _state.provider is not None:
        return _state.provider
    if exporter is None and not otlp_configured(env):
        return None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if set_global:
        trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = provider.get_tracer(TRACER_NAME)
    return provider


def instrument_celery() -> None:
    """Trace Celery publishes and task runs (context travels in the message headers)."""
    if _state.provider is None or _state.celery_instrumentor is not None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=_state.provider)
    _state.celery_instrumentor = instrumentor


def shutdown_tracing() -> None:
    """Flush and turn tracing off again (tests; process exit)."""
    if _state.celery_instrumentor is not None:
        _state.celery_instrumentor.uninstrument()
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.provider = None
    _state.tracer = None
    _state.celery_instrumentor = None


def tracer_provider() -> TracerProvider | None:
    """The provider when tracing is on."""
    return _state.provider


def tracing_enabled() -> bool:
    return _state.provider is not None


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, when there is a valid one."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def incoming_trace_id(headers: Any) -> str | None:
    """The trace id of a W3C ``traceparent`` header (in a dict-like ``headers``), when valid."""
    if "traceparent" not in headers:
        return None
    context = trace.get_current_span(_W3C.extract(headers)).get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


@contextlib.contextmanager
def submit_span(headers: Any, requested_trace_id: str | None) -> Iterator[str | None]:
    """Around one submission; yields the trace id the job will carry (``None``: a new one).

    A ``traceparent`` header wins (the HTTP span already continues it). Without
    one, ``metadata.traceId`` becomes the trace of a ``pulse.submit`` span, and
    so of the publish and the worker's run, linked to the HTTP request's span.
    Otherwise no span of its own: the HTTP span is the submission's.
    """
    if _state.tracer is None:
        token = _submit_trace.set(incoming_trace_id(headers) or requested_trace_id)
        try:
            yield _submit_trace.get()
        finally:
            _submit_trace.reset(token)
        return
    # the server span continued a traceparent already: no second parse of it
    if not requested_trace_id or "traceparent" in headers or requested_trace_id == current_trace_id():
        yield current_trace_id()
        return
    remote = SpanContext(
        trace_id=int(requested_trace_id, 16),
        span_id=int(new_trace_id()[:16], 16) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    http_span = trace.get_current_span().get_span_context()
    with _state.tracer.start_as_current_span(
        "pulse.submit",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.INTERNAL,
        links=[Link(http_span)] if http_span.is_valid else None,
    ):
        yield current_trace_id()


def publish_context(carrier: dict[str, Any], task_name: str, job: Job) -> None:
    """For a message no Celery publish signal sees (pushed by a Redis script): a producer
    span, as the Celery instrumentation makes, and its W3C ``traceparent`` in ``carrier``.
    Inside a trace that is not sampled, no span: the current context's ``traceparent``
    (flags 00) carries the decision to the worker."""
    tracer = _state.tracer
    if tracer is None:
        return
    current = trace.get_current_span()
    if current.get_span_context().is_valid and not current.is_recording():
        _inject(carrier, current.get_span_context())
        return
    span = tracer.start_span(
        f"apply_async/{task_name}",
        kind=SpanKind.PRODUCER,
        attributes={"pulse.job_id": job.job_id, "messaging.destination.name": job.queue},
    )
    _inject(carrier, span.get_span_context())
    span.end()


def _inject(carrier: dict[str, Any], context: SpanContext) -> None:
    """``context`` as W3C trace context headers (what ``TraceContextTextMapPropagator.inject``
    writes, without its context lookups)."""
    if not context.is_valid:
        return
    carrier["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    if context.trace_state:
        carrier["tracestate"] = context.trace_state.to_header()


class ServerSpan:
    """A request's span while it is current (``start_server_span``)."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span, self.token = span, token


def start_server_span(method: str, route: str | None, path: str, headers: Any) -> ServerSpan | None:
    """Start the span of one HTTP request (named ``METHOD route``, as OpenTelemetry's HTTP
    conventions name it) and make it current; it continues the request's ``traceparent``.
    ``None`` when tracing is off. End it with ``end_server_span``, in the same context."""
    tracer = _state.tracer
    if tracer is None:
        return None
    parent = _W3C.extract(headers) if "traceparent" in headers else None
    attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
    if route:
        attributes["http.route"] = route
    span = tracer.start_span(
        f"{method} {route}" if route else method, context=parent, kind=SpanKind.SERVER, attributes=attributes
    )
    return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span)))


def end_server_span(handle: ServerSpan, status_code: int | None, exc: BaseException | None) -> None:
    """End a request's span with its status (an error from 500 up, or an exception that escaped)."""
    span = handle.span
    if span.is_recording():
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        if exc is not None:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        elif status_code is not None and status_code >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    otel_context.detach(handle.token)  # type: ignore[arg-type]


def job_trace_id(requested_trace_id: str | None) -> str:
    """The trace id a new job records: the current trace's, else the requested one, else new."""
    if _state.tracer is not None:
        found = current_trace_id()
        if found:
            return found
    return _submit_trace.get() or requested_trace_id or new_trace_id()


def job_span(job: Job) -> AbstractContextManager[Any]:
    """The span of one attempt, under the worker's task span."""
    if _state.tracer is None:
        return _NOOP
    return _state.tracer.start_as_current_span(
        f"job {job.job_type}",
        kind=SpanKind.INTERNAL,
        attributes={
            "pulse.job_id": job.job_id,
            "pulse.tenant_id": job.tenant_id,
            "pulse.job_type": job.job_type,
            "pulse.attempt": job.attempts,
            "pulse.queue": job.queue,
        },
    )


def handler_span(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Any]:
    """A child span a handler opens through ``ctx.span``; a no-op when tracing is off."""
    if _state.tracer is None:
        return _NOOP
    return _state.tracer.start_as_current_span(name, attributes=_attrs(attributes))


def record_error(exc: BaseException) -> None:
    """Mark the current span failed with ``exc`` (its type and message, no payload)."""
    if _state.tracer is None:
        return
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))


def _attrs(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}
