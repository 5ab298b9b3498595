"""``POST /v1/jobs`` before Flask: the common submit answered in a few lines of WSGI.

A plain submit (a known tenant's bearer key, ``Content-Type: application/json``, a
``Content-Length`` within the tenant's cap, a JSON body the document accepts, no
``traceparent``) spends most of its Python outside the submission when it goes through
Flask: the request and app contexts, routing, flask-smorest's and webargs' wrappers,
the hooks, the response object. ``FastSubmit`` wraps the app's WSGI callable and answers
exactly that request itself, with what the Flask path runs: the same authentication,
loader (``pulse_api.fast_load``), ``Submitter.submit``, spans (``tracing``), log context,
and the same answer, byte for byte (``jsonify``'s body, the view's headers in their
order, werkzeug's status line).

Everything else goes to Flask untouched (the body, if read, handed back as it was):
any other path or method, an unknown key, another media type, a chunked or oversized
body, a body that is not JSON or that the fast loader doubts, a ``traceparent`` to
continue. A submission the admission refuses (or that fails) is answered by Flask's
own error handling and hooks, in a request context holding the tenant and the span
already started, so its problem document, headers, refusal count and span are the
ones the view would have given. ``tests/test_fast_submit.py`` holds both paths to
the same answers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, g
from werkzeug.http import HTTP_STATUS_CODES

from pulse_api import fast_load, observability
from pulse_api.jobs import job_body, rate_limit_headers
from pulse_api.parsing import loads
from pulse_api.schemas import JobSubmitSchema
from pulse_api.services import EXTENSION_KEY, Services
from pulse_core.guards.rate_limits import LimitStatus
from pulse_core.jobs import Job
from pulse_core.telemetry import logs, tracing
from pulse_core.tenants import Tenant

PATH = "/v1/jobs"
#: The route's rule, as the span of a request through Flask names it.
ROUTE = "/v1/jobs"
_STATUS = {code: f"{code} {HTTP_STATUS_CODES[code].upper()}" for code in (200, 202)}
#: The request headers a submit reads, for ``tracing.submit_span`` (no ``traceparent``:
#: a request with one goes through Flask).
_NO_TRACEPARENT: dict[str, str] = {}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastSubmit:
    """The app's WSGI callable, with plain ``POST /v1/jobs`` requests answered before Flask."""

    def __init__(self, app: Flask, flask_wsgi: WsgiApp) -> None:
        self.app = app
        self.flask_wsgi = flask_wsgi

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.flask_wsgi(environ, start_response)
        return self._submit(environ, start_response)

    def _submit(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = self.app
        svc: Services = app.extensions[EXTENSION_KEY]
        try:
            accepted = self._accept(svc, environ)
        except Exception:  # whatever the checks ran into, Flask's path runs into too, and answers
            accepted = None
        if accepted is None:
            return self.flask_wsgi(environ, start_response)
        tenant, body = accepted

        span = None
        if app.extensions.get(observability.TRACED_KEY):
            span = tracing.start_server_span("POST", ROUTE, PATH, _NO_TRACEPARENT)
        try:
            trace_id = (body.get("metadata") or {}).get("traceId")
            with tracing.submit_span(_NO_TRACEPARENT, trace_id):
                admitted = svc.submitter.submit(tenant, body, header_key=environ.get("HTTP_IDEMPOTENCY_KEY"))
        except Exception as exc:  # a refusal (or Redis failing): Flask answers it, as the view's
            return self._refused(environ, start_response, tenant, span, exc)

        try:
            payload = self._answer(admitted.job)
        except Exception as exc:  # the view would have raised it as well: Flask answers it, hooks and all
            return self._refused(environ, start_response, tenant, span, exc, admitted.limit)
        code = 200 if admitted.replayed else 202
        headers = [
            ("Content-Type", app.json.mimetype),  # type: ignore[attr-defined]
            ("Content-Length", str(len(payload))),
            ("Location", f"/v1/jobs/{admitted.job.job_id}"),
            *rate_limit_headers(admitted.limit).items(),
        ]
        if admitted.replayed:
            headers.append(("Idempotent-Replayed", "true"))
        start_response(_STATUS[code], headers)
        if span is not None:
            tracing.end_server_span(span, code, None)
        logs.clear_job()
        return [payload]

    def _answer(self, job: Job) -> bytes:
        """The job document as ``jsonify`` writes it."""
        json_provider: Any = self.app.json
        if (json_provider.compact is None and self.app.debug) or json_provider.compact is False:
            text = json_provider.dumps(job_body(job), indent=2)
        else:
            text = json_provider.dumps(job_body(job), separators=(",", ":"))
        return f"{text}\n".encode()

    def _accept(self, svc: Services, environ: dict[str, Any]) -> tuple[Tenant, dict[str, Any]] | None:
        """The tenant and the loaded body, when Flask's path would take the request
        through to the submission; else ``None`` (and the body, if read, put back)."""
        length = environ.get("CONTENT_LENGTH", "")
        if (
            environ.get("CONTENT_TYPE") != "application/json"
            or not (length.isascii() and length.isdigit())
            or "HTTP_TRANSFER_ENCODING" in environ
            or "HTTP_TRACEPARENT" in environ
        ):
            return None
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key = key.strip()
        tenant = svc.tenants.authenticate(key) if scheme.lower() == "bearer" and key else None
        size = int(length)
        if tenant is None or not 0 < size <= tenant.max_payload_bytes:
            return None
        data = environ["wsgi.input"].read(size)
        environ["wsgi.input"] = io.BytesIO(data)  # Flask reads (and refuses) it as sent, if it must
        body = _load(self.app, data) if len(data) == size else None
        return None if body is None else (tenant, body)

    def _refused(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        tenant: Tenant,
        span: tracing.ServerSpan | None,
        error: Exception,
        admitted_at: LimitStatus | None = None,
    ) -> Iterable[bytes]:
        """The answer to a submission the view would have refused with ``error``: Flask's
        error handler, ``after_request`` and teardown hooks, in the request's context.
        ``admitted_at``: where the rate limit stood at the admission of a job whose answer
        then failed (its headers, as the view's)."""
        app = self.app
        ctx = app.request_context(environ)
        handled: BaseException | None = None
        try:
            ctx.push()
            g.tenant = tenant
            if admitted_at is not None:
                g.admitted_limit = admitted_at
            if span is not None:
                g.pulse_span = span  # the teardown ends it, with the status after_request saw
            try:
                response = app.finalize_request(app.handle_user_exception(error))
            except Exception as unhandled:
                handled = unhandled
                response = app.handle_exception(unhandled)
            return response(environ, start_response)
        finally:
            if handled is not None and app.should_ignore_error(handled):
                handled = None
            ctx.pop(handled)


def _load(app: Flask, data: bytes) -> dict[str, Any] | None:
    """The body as the view gets it, when the fast loader accepts it; else ``None``."""
    try:
        parsed = loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    loader = app.extensions[fast_load.EXTENSION_KEY].get(JobSubmitSchema)
    return loader.try_load(parsed) if loader is not None else None


def install(app: Flask) -> None:
    """Answer plain ``POST /v1/jobs`` requests before ``app``'s Flask machinery."""
    app.wsgi_app = FastSubmit(app, app.wsgi_app)  # type: ignore[method-assign]
