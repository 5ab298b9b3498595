"""Celery's machinery, kept in this one module.

Pulse runs every job through one generic task, ``pulse.run_job``, whose only
argument is the job id: the payload stays in the job store, so it never travels
in the message or shows in task events. Each message carries the jobType as its
display name (Celery's ``shadow``), so Flower lists jobTypes.
"""

from __future__ import annotations

from celery import Celery

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


def declare_run_job(app: Celery) -> None:
    """Make a publishing-only app (the API's) know ``pulse.run_job`` by name.

    Publish signal receivers, such as OpenTelemetry's Celery instrumentation,
    look the task up by name on the current app; without it they open a publish
    span they never close. The body never runs: workers register the real task.
    """

    if RUN_JOB_TASK in app.tasks:  # a worker's task, shared into this app (in tests)
        return

    @app.task(name=RUN_JOB_TASK, ignore_result=True, shared=False)
    def run_job_on_a_worker(job_id: str) -> None:
        raise RuntimeError("pulse.run_job runs on Pulse workers, not in a publisher")


def publish_job(app: Celery, job: Job) -> None:
    """Put ``job`` on its queue as one ``pulse.run_job`` message."""
    # The current app (a thread-local) is where publish signal receivers look the task up.
    app.set_current()
    app.send_task(
        RUN_JOB_TASK,
        args=(job.job_id,),
        queue=job.queue,
        shadow=job.job_type,
        argsrepr=repr((job.job_id,)),
        kwargsrepr="{}",
    )
