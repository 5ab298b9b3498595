"""``/healthz`` (the process is alive) and ``/readyz`` (Redis and the broker answer)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from pulse_api.problems import problem
from pulse_api.schemas import HealthSchema, ProblemSchema
from pulse_api.services import services

blp = Blueprint("health", __name__, description="Liveness and readiness")

_BROKER_TIMEOUT_SECONDS = 2.0


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, Any]:
        """The process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=ProblemSchema, description="Redis or the broker is down")
    def get(self) -> Any:
        """Redis and the broker are reachable."""
        checks = {"redis": _check_redis(), "broker": _check_broker()}
        if all(value == "ok" for value in checks.values()):
            return {"status": "ok", "checks": checks}
        failing = ", ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
        return problem(503, "unavailable", "Not ready", detail=failing, headers={"Retry-After": "1"})


def _check_redis() -> str:
    try:
        services().redis.ping()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def _check_broker() -> str:
    svc = services()
    try:
        with svc.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=_BROKER_TIMEOUT_SECONDS)
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"
