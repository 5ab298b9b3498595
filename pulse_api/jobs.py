"""``/v1/jobs``: submit a job and read its status."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from pulse_api.auth import authenticate_request, current_tenant
from pulse_api.schemas import JobSchema, JobSubmitSchema, ProblemSchema
from pulse_api.services import services
from pulse_api.submit import submit_job
from pulse_core import telemetry
from pulse_core.errors import JobNotFound, UnsupportedMediaType

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Submit jobs, read status")


@blp.before_request
def _guard() -> None:
    authenticate_request()
    if request.method == "POST" and request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type is {request.mimetype or 'missing'}; send application/json"
        )


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobSubmitSchema)
    @blp.response(
        202,
        JobSchema,
        description="Accepted: the job is queued",
        headers={"Location": {"description": "URL of the job", "schema": {"type": "string"}}},
    )
    @blp.alt_response(400, schema=ProblemSchema, description="Malformed JSON")
    @blp.alt_response(401, schema=ProblemSchema, description="Missing or invalid API key")
    @blp.alt_response(415, schema=ProblemSchema, description="Body is not application/json")
    @blp.alt_response(422, schema=ProblemSchema, description="Invalid job (named per field)")
    @blp.alt_response(503, schema=ProblemSchema, description="Broker or Redis unavailable")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Submit a job."""
        trace_id = (body.get("metadata") or {}).get("traceId")
        with telemetry.submit_span(request.headers, trace_id):
            job = submit_job(services(), current_tenant(), body)
        return job.document(), 202, {"Location": f"/v1/jobs/{job.job_id}"}


@blp.route("/<string:job_id>")
class JobById(MethodView):
    @blp.response(200, JobSchema)
    @blp.alt_response(401, schema=ProblemSchema, description="Missing or invalid API key")
    @blp.alt_response(404, schema=ProblemSchema, description="No such job for this tenant")
    def get(self, job_id: str) -> dict[str, Any]:
        """Read a job's status."""
        job = services().store.get_for_tenant(current_tenant().tenant_id, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job.document()
