"""``/v1/jobs``: submit a job, list the tenant's jobs, read one job's status, cancel it."""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Response, g, jsonify, request
from flask.views import MethodView

from pulse_api import door
from pulse_api.openapi import RATE_LIMIT_HEADERS, problems
from pulse_api.parsing import PulseBlueprint
from pulse_api.schemas import JobListArgsSchema, JobListSchema, JobSchema, JobSubmitSchema
from pulse_api.services import services
from pulse_core.errors import JobNotCancellable, JobNotFound
from pulse_core.guards.rate_limits import LimitStatus, whole_seconds
from pulse_core.jobs import Job, JobState
from pulse_core.telemetry import metrics, tracing

blp = PulseBlueprint("jobs", __name__, url_prefix="/v1/jobs", description="Submit jobs, read status")

_LOCATION = {"Location": {"description": "URL of the job", "schema": {"type": "string"}}}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "true: the idempotency key was seen; this is the original job",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


@blp.before_request
def _guard() -> None:
    door.guard(lambda tenant: tenant.max_payload_bytes)


@blp.after_request
def _rate_limit_headers(response: Response) -> Response:
    return add_rate_limit_headers(response)


_JOB_SCHEMA = JobSchema()


def job_body(job: Job) -> dict[str, Any]:
    """The job document as ``JobSchema`` dumps it, without the dump on the hot path:
    ``Job.document()`` has exactly the schema's fields and types, except that a recorded
    ``error`` may hold more than the schema documents (the dump leaves those out)."""
    document = job.document()
    return document if document["error"] is None else _JOB_SCHEMA.dump(document)


def rate_limit_headers(status: LimitStatus) -> dict[str, str]:
    """The ``RateLimit-*`` headers of a submit answer."""
    return {
        "RateLimit-Limit": str(status.limit),
        "RateLimit-Remaining": str(status.remaining),
        "RateLimit-Reset": str(whole_seconds(status.reset)),
    }


def add_rate_limit_headers(response: Response) -> Response:
    """Give a refused submit answer the headers too: a rate-limit refusal those of the step
    that refused it, an answer that failed after its job was admitted (a 500) those of that
    admission, one refused before admission (400, 413, 415, 422) the tenant's standing."""
    tenant = g.get("tenant")
    missing = "RateLimit-Limit" not in response.headers
    known: LimitStatus | None = g.get("refusal_limit") or g.get("admitted_limit")
    if request.method == "POST" and known is not None and missing:
        response.headers.update(rate_limit_headers(known))
    elif request.method == "POST" and tenant is not None and missing:
        # The answer matters more than its headers (e.g. Redis is down).
        with contextlib.suppress(Exception):
            response.headers.update(rate_limit_headers(services().admission.status(tenant)))
    return response


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobSubmitSchema)
    @blp.response(
        202,
        JobSchema,
        description="Accepted: the job is queued",
        headers={**_LOCATION, **RATE_LIMIT_HEADERS},
    )
    @blp.alt_response(
        200,
        schema=JobSchema,
        success=True,
        description="Idempotent replay: the job first sent with this key, in its current state",
        headers={**_LOCATION, **_REPLAYED, **RATE_LIMIT_HEADERS},
    )
    @problems(blp, 400, 401, 403, 413, 415, 422, 429, 503, submit=True)
    @blp.doc(
        parameters=[
            {
                "in": "header",
                "name": "Idempotency-Key",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "Same key and body give back the same job (or idempotencyKey)",
            }
        ]
    )
    @blp.doc(security=[{"bearer": []}])
    def post(self, body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
        """Submit a job."""
        svc = services()
        trace_id = (body.get("metadata") or {}).get("traceId")
        with tracing.submit_span(request.headers, trace_id):
            admitted = svc.submitter.submit(g.tenant, body, header_key=request.headers.get("Idempotency-Key"))
        g.admitted_limit = admitted.limit  # for the headers of an answer that fails from here on
        headers = {"Location": f"/v1/jobs/{admitted.job.job_id}", **rate_limit_headers(admitted.limit)}
        if admitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        # Serialized once, here: flask-smorest passes a response through without its dump.
        return jsonify(job_body(admitted.job)), 200 if admitted.replayed else 202, headers

    @blp.arguments(JobListArgsSchema, location="query")
    @blp.response(200, JobListSchema)
    @problems(blp, 401, 422)
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List the tenant's own jobs, newest first (cursor-paginated)."""
        state = args.get("state")
        page = services().store.list_for_tenant(
            g.tenant.tenant_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            state=JobState(state) if state else None,
            job_type=args.get("jobType"),
        )
        items = [job.document() for job in page.items]
        return {"items": items, "jobs": items, "nextCursor": page.next_cursor}


@blp.route("/<string:job_id>")
class JobById(MethodView):
    @blp.response(200, JobSchema)
    @problems(blp, 401, 404)
    @blp.doc(security=[{"bearer": []}])
    def get(self, job_id: str) -> dict[str, Any]:
        """Read a job's status."""
        job = services().store.get_for_tenant(g.tenant.tenant_id, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job.document()


@blp.route("/<string:job_id>/cancel")
class CancelJob(MethodView):
    @blp.response(
        200,
        JobSchema,
        description="The job after the request: cancelled, or still "
        "running with cancelRequested set (the handler decides when to stop)",
    )
    @problems(blp, 401, 404, 409)
    @blp.doc(security=[{"bearer": []}])
    def post(self, job_id: str) -> dict[str, Any]:
        """Cancel a job.

        A queued, scheduled or retrying job becomes ``cancelled`` and never runs. A
        running job is flagged: its handler sees ``ctx.cancel_requested()`` and may
        stop by raising ``JobCancelled`` (the job ends ``cancelled``); a handler that
        finishes anyway keeps its outcome, and no retry follows a failure.
        """
        svc = services()
        tenant_id = g.tenant.tenant_id
        outcome = svc.store.cancel(tenant_id, job_id)
        if outcome == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if outcome.startswith("finished:"):
            raise JobNotCancellable(f"job {job_id!r} is already {outcome.partition(':')[2]}")
        job = svc.store.get_for_tenant(tenant_id, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        if outcome == "cancelled":
            metrics.job_cancelled(tenant_id, job.job_type)
        return job.document()
