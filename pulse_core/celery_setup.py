"""Celery's machinery, kept in this one module.

Pulse runs every job through one generic task, ``pulse.run_job``, whose only
argument is the job id: the payload stays in the job store, so it never travels
in the message or shows in task events. Each message carries the jobType as its
display name (Celery's ``shadow``), so Flower lists jobTypes.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from urllib.parse import urlparse

from celery import Celery
from kombu.utils.json import dumps as kombu_dumps

from pulse_core.jobs import Job
from pulse_core.settings import Settings

RUN_JOB_TASK = "pulse.run_job"

#: How long the Redis broker waits for an ack before redelivering a message.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600


def create_celery(settings: Settings, *, main: str = "pulse") -> Celery:
    """A Celery app configured the Pulse way: JSON only, late acks, no result backend."""
    app = Celery(main, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        # The job store is the source of truth; Celery's results are not needed.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # Ack only after the task ran; a worker lost mid-task puts its message back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.default_queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": DEFAULT_VISIBILITY_TIMEOUT_SECONDS},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def publish_job(app: Celery, job: Job) -> None:
    """Put ``job`` on its queue as one ``pulse.run_job`` message."""
    app.send_task(
        RUN_JOB_TASK,
        args=(job.job_id,),
        queue=job.queue,
        shadow=job.job_type,
        argsrepr=repr((job.job_id,)),
        kwargsrepr="{}",
    )


def publish_jobs(app: Celery, jobs: Iterable[Job]) -> int:
    """Publish ``jobs`` in order over one producer (one connection); return how many went.

    Stops at the first failure and raises it; the caller undoes the jobs not yet sent.
    """
    sent = 0
    with app.producer_or_acquire() as producer:
        for job in jobs:
            app.send_task(
                RUN_JOB_TASK,
                args=(job.job_id,),
                queue=job.queue,
                shadow=job.job_type,
                argsrepr=repr((job.job_id,)),
                kwargsrepr="{}",
                producer=producer,
            )
            sent += 1
    return sent


def publishes_inline(settings: Settings) -> bool:
    """Whether jobs can be pushed by the admission script (broker is the job store's Redis)."""
    scheme = urlparse(settings.broker_url).scheme
    return settings.broker_url == settings.redis_url and scheme in {"redis", "rediss", "unix"}


def encode_message(app: Celery, job: Job) -> str:
    """The ``pulse.run_job`` message for ``job``, exactly as kombu's Redis transport stores it.

    Celery builds the task message (protocol 2); the envelope is kombu's
    (``Channel.prepare_message`` + ``basic_publish`` on the anonymous exchange,
    body base64-encoded), so workers, Flower and redelivery treat it like any other.
    """
    task_id = str(uuid.uuid4())
    argsrepr = repr((job.job_id,))
    message = app.amqp.as_task_v2(
        task_id,
        RUN_JOB_TASK,
        args=(job.job_id,),
        kwargs={},
        shadow=job.job_type,
        argsrepr=argsrepr,
        kwargsrepr="{}",
    )
    body = base64.b64encode(kombu_dumps(message.body).encode("utf-8")).decode("ascii")
    properties = {
        **message.properties,
        # send_task passes these as publish options too; kombu keeps them as properties.
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": job.queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message.headers,
        "properties": properties,
    }
    return str(kombu_dumps(envelope))
