"""The API's telemetry: a metrics endpoint on a port of its own, refusals counted by reason,
Flask tracing, log context."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from pulse_api.services import Services, services
from pulse_core.broker.queue_depth import AmqpQueueDepthCollector, QueueDepthCollector
from pulse_core.broker.routing import configured_queues
from pulse_core.redis_client import connect
from pulse_core.settings import Settings, is_redis_url
from pulse_core.store.job_types import LiveJobTypesCollector
from pulse_core.telemetry import logs, metrics, tracing
from pulse_core.telemetry.metrics import RejectReason
from pulse_core.tenants import TenantsSource

REGISTRY_KEY = "pulse.metrics"
#: Paths whose requests make no spans (scrapes and probes would drown the traces).
UNTRACED = "healthz,readyz,metrics"

#: Problem type slugs (see ``pulse_api.problems``) that name a refusal reason.
#: The submissions whose refusals count: POST /v1/jobs and a batch refused whole.
SUBMIT_ENDPOINTS = frozenset({"jobs.Jobs", "batches.Batches"})
#: A refusal that is no ``PulseError`` (which carries its ``reason``): the status decides;
#: any other 4xx is a validation refusal.
REASON_BY_STATUS = {
    401: RejectReason.UNAUTHENTICATED,
    429: RejectReason.RATE_LIMIT,
    503: RejectReason.UNAVAILABLE,
}

_UNTRACED = frozenset(UNTRACED.split(","))
TRACED_KEY = "pulse.traced"


def metrics_registry(app: Flask) -> CollectorRegistry:
    """What the API's metrics endpoint exposes: every API process summed, and queue depths."""
    registry: CollectorRegistry = app.extensions[REGISTRY_KEY]
    return registry


def serve_metrics(app: Flask, host: str, port: int) -> None:
    """Serve ``app``'s metrics on ``host:port``, apart from the public API (in a thread).

    The public port has no ``/metrics``: the numbers name every tenant, so they are
    for Prometheus on a network of its own, never for a tenant's key.
    """
    start_http_server(port, host, metrics_registry(app))


def install(app: Flask, svc: Services) -> None:
    """Wire telemetry into ``app``: metrics registry, refusal counting, tracing, log context."""
    metrics.set_enabled(svc.settings.metrics_enabled)
    broker = _broker_redis(svc.settings)
    extra: list[Collector] = [LiveJobTypesCollector(svc.redis)]
    queues = lambda: known_queues(svc.settings, svc.tenants)  # noqa: E731
    if broker is not None:
        extra.append(QueueDepthCollector(svc.redis, broker, queues))
    else:  # RabbitMQ: passive declares on the broker
        extra.append(AmqpQueueDepthCollector(svc.redis, svc.celery, queues))
    app.extensions[REGISTRY_KEY] = metrics.exposition_registry(*extra)
    app.after_request(_count_refusal)
    app.teardown_request(_clear_log_context)
    instrument_tracing(app)


def instrument_tracing(app: Flask) -> None:
    """Trace ``app``'s requests and Celery publishes, once this process's tracing is on.

    ``create_app`` calls it; under gunicorn (which preloads the app in its master,
    before any provider may exist) the ``post_fork`` hook calls it in each worker.
    """
    provider = tracing.tracer_provider()
    if provider is None or app.extensions.get(TRACED_KEY):
        return
    app.before_request(_start_span)
    app.after_request(_span_status)
    app.teardown_request(_end_span)
    tracing.instrument_celery()  # the publish span, and the context into the message
    app.extensions[TRACED_KEY] = True


def _start_span() -> None:
    """``before_request``: the request's server span (``tracing.start_server_span``), but for
    scrapes and probes (``UNTRACED``)."""
    path = request.path
    if path.rsplit("/", 1)[-1] in _UNTRACED:
        return
    rule = request.url_rule
    g.pulse_span = tracing.start_server_span(
        request.method, rule.rule if rule is not None else None, path, request.headers
    )


def _span_status(response: Response) -> Response:
    """``after_request``: the status code the span ends with."""
    g.pulse_span_status = response.status_code
    return response


def _end_span(exc: BaseException | None) -> None:
    handle = g.pop("pulse_span", None)
    if handle is not None:
        tracing.end_server_span(handle, g.pop("pulse_span_status", None), exc)


def known_queues(settings: Settings, tenants: TenantsSource) -> Iterable[str]:
    """The queues named by configuration (the config in force, re-read on change)."""
    return configured_queues(tenants.config, settings.default_queue)


def _broker_redis(settings: Settings) -> Any:
    if is_redis_url(settings.broker_url):
        return connect(settings.broker_url)
    return None


def _count_refusal(response: Response) -> Response:
    """``after_request``: a refused submission counts once, by reason."""
    if request.endpoint not in SUBMIT_ENDPOINTS or response.status_code < 400:
        return response
    if response.status_code >= 500 and response.status_code != 503:
        return response
    noted = g.get("refusal_reason")
    reason = RejectReason(noted) if noted else REASON_BY_STATUS.get(response.status_code, RejectReason.VALIDATION)
    tenant = getattr(g, "tenant", None)
    if tenant is None:  # nothing an unauthenticated caller sent is looked at
        metrics.job_rejected(None, None, reason)
    else:
        metrics.job_rejected(tenant.tenant_id, _live_job_type(), reason)
    return response


def _live_job_type() -> str | None:
    """The body's jobType, only when it names a live jobType (labels never echo request text)."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested past the parser's depth: refused as malformed already
        return None
    job_type = body.get("jobType") if isinstance(body, dict) else None
    if not isinstance(job_type, str):
        return None
    try:
        return job_type if services().job_types.is_live(job_type) else None
    except Exception:  # Redis down: the refusal still counts, under "unknown"
        return None


def _clear_log_context(exc: BaseException | None) -> None:
    logs.clear_job()
