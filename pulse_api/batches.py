"""``/v1/batches``: submit many jobs at once, each answered on its own, in order."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from marshmallow import ValidationError

from pulse_api import door, fast_load
from pulse_api.jobs import add_rate_limit_headers, job_body, rate_limit_headers
from pulse_api.openapi import RATE_LIMIT_HEADERS, problems
from pulse_api.parsing import PulseBlueprint
from pulse_api.problems import problem_for, validation_problem
from pulse_api.schemas import BatchResultSchema, BatchSubmitSchema, JobSubmitSchema
from pulse_api.services import services
from pulse_core.errors import BatchTooLarge, PulseError
from pulse_core.guards.admission import Admitted

blp = PulseBlueprint("batches", __name__, url_prefix="/v1/batches", description="Submit many jobs")


@blp.before_request
def _guard() -> None:
    door.guard(lambda _tenant: services().settings.batch_max_bytes)


@blp.after_request
def _rate_limit_headers(response: Response) -> Response:
    return add_rate_limit_headers(response)


@blp.route("")
class Batches(MethodView):
    @blp.arguments(BatchSubmitSchema)
    @blp.response(
        200,
        BatchResultSchema,
        description="Every job answered in request order: a job (202 new, 200 replay) or "
        "the problem that refused it. Idempotency applies per item (idempotencyKey), "
        "the rate limit per job.",
        headers=RATE_LIMIT_HEADERS,
    )
    @problems(blp, 400, 401, 413, 415, 422, 503, submit=True)
    @blp.doc(security=[{"bearer": []}])
    def post(self, body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
        """Submit up to PULSE_BATCH_MAX_JOBS jobs (500 by default)."""
        svc = services()
        bodies = body["jobs"]
        if len(bodies) > svc.settings.batch_max_jobs:
            raise BatchTooLarge(f"{len(bodies)} jobs; a batch holds at most {svc.settings.batch_max_jobs}")
        items: list[dict[str, Any]] = []
        last_limit = None
        loader = fast_load.loader_for(JobSubmitSchema)
        load = loader.load if loader is not None else JobSubmitSchema().load
        for verdict in svc.submitter.submit_many(g.tenant, bodies, load, (ValidationError,)):
            if isinstance(verdict, Admitted):
                last_limit = verdict.limit
                status = 200 if verdict.replayed else 202
                item = {"status": status, "job": job_body(verdict.job)}
                if verdict.replayed:
                    item["replayed"] = True
            elif isinstance(verdict, ValidationError):
                status, doc = validation_problem(verdict.normalized_messages())
                item = {"status": status, "problem": doc}
            elif isinstance(verdict, PulseError):
                status, doc, _headers = problem_for(verdict)
                item = {"status": status, "problem": doc}
            else:  # submit_many answers only with the error types it was given
                raise verdict
            items.append(item)
        accepted = sum(1 for item in items if item["status"] < 300)
        headers = rate_limit_headers(last_limit) if last_limit else {}
        result = {"accepted": accepted, "refused": len(items) - accepted, "items": items}
        # Serialized once, here: every part already has BatchResultSchema's shape.
        return jsonify(result), 200, headers
