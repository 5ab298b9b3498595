"""The plain stack Pulse is compared with: a bare Celery task and a bare Flask endpoint.

Same broker, serializer, pool, concurrency and ack settings as Pulse; nothing else.
Run as ``celery -A bench.plain_stack worker`` and ``gunicorn 'bench.plain_stack:create_flask_app()'``
(``bench.servers.bare_api``), each with ``BENCH_BROKER_URL`` naming the bench's private
Redis: there is no default, so the bare side can never publish to some other Redis.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request

BROKER_ENV = "BENCH_BROKER_URL"
#: "1" stores each result in Redis, as a team wiring Celery + Redis for status would.
STORE_RESULTS = os.environ.get("BENCH_STORE_RESULTS", "0") == "1"

celery_app = Celery("plain")
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=not STORE_RESULTS,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="plain",
    broker_connection_retry_on_startup=True,
)


def use_broker(url: str) -> None:
    """Point the plain Celery app (broker and, when results are stored, backend) at ``url``."""
    celery_app.conf.broker_url = url
    celery_app.conf.result_backend = url if STORE_RESULTS else None


if os.environ.get(BROKER_ENV):
    use_broker(os.environ[BROKER_ENV])


@celery_app.task(name="bench.echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def create_flask_app() -> Flask:
    """The bare endpoint: parse the body, ``apply_async``, answer 202 with the task id."""
    if not os.environ.get(BROKER_ENV):
        raise RuntimeError(f"{BROKER_ENV} is not set: the bare endpoint must publish to the bench's Redis")
    flask_app = Flask("plain")

    @flask_app.post("/jobs")
    def submit() -> Any:
        body = request.get_json()
        result = echo.apply_async(args=(body.get("payload", {}),))
        return jsonify({"id": result.id}), 202

    @flask_app.get("/")
    def index() -> Any:
        return "ok"

    return flask_app
