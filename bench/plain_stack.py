"""The plain stack Pulse is compared with: a bare Celery task and a bare Flask endpoint.

Same broker, serializer, pool, concurrency and ack settings as Pulse; nothing else.
Run as ``celery -A bench.plain_stack worker`` and ``gunicorn bench.plain_stack:flask_app``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request

BROKER = os.environ.get("PULSE_BROKER_URL", "redis://127.0.0.1:6379/0")
#: "1" stores each result in Redis, as a team wiring Celery + Redis for status would.
STORE_RESULTS = os.environ.get("BENCH_STORE_RESULTS", "0") == "1"

celery_app = Celery("plain", broker=BROKER, backend=BROKER if STORE_RESULTS else None)
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


@celery_app.task(name="bench.echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


flask_app = Flask("plain")


@flask_app.post("/jobs")
def submit() -> Any:
    body = request.get_json()
    result = echo.apply_async(args=(body.get("payload", {}),))
    return jsonify({"id": result.id}), 202
