"""Publishing the jobs a worker released from parking on a broker other than the job store's
Redis (``publish_released``); their message on a Redis broker is
``pulse_core.submission.parked.parked_message``.

A job that waits in Redis (over an execution limit, a delayed start, a retry's backoff:
``pulse_core.guards.execution_limits``) is parked there with its message when the broker
is the job store's Redis, and the releasing script pushes that message back itself. With
another broker (RabbitMQ) a script cannot publish: the job is parked without a message.
Found due, it joins its tenant's ready set (``release_due.lua``), and the workers' top-up
publishes it in its tenant's turn (``pulse_worker.guardian.pump_queues``); handed a freed run
slot, the script gives its id back, and the worker that released it publishes it here, at the
dispatcher's one priority (so released and dispatched jobs are delivered in the order
they were sent). A worker killed between the release and the publish leaves the job
non-final with no message: the recovery sweep publishes it at its deadline. A job published
has its deadline pushed ``PULSE_QUEUED_CHECK_SECONDS`` on: the sweep cannot see RabbitMQ's
queue, and a job released with many others may wait there a while before a worker takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pulse_core.broker.celery_app import publish_jobs
from pulse_core.jobs import FINAL_STATES
from pulse_core.store.job_store import JobStore

log = logging.getLogger("pulse.worker")

#: The broker priority the dispatcher publishes at on a broker other than the job store's
#: Redis: one, so delivery keeps its order.
DISPATCHED_PRIORITY = 0


def publish_released(app: Celery, store: JobStore, job_ids: Sequence[str], *, check_in: float) -> int:
    """Publish the jobs ``job_ids`` (released from parking) to their queues and push their
    deadlines ``check_in`` seconds on; how many went. A job gone or final meanwhile (cancelled
    while it waited) is left out. Never raises for a Redis or broker failure: what was not
    published is the sweep's to publish."""
    if not job_ids:
        return 0
    errors = (KombuError, OSError, RedisError)
    try:
        jobs = [job for job in store.get_listed(job_ids) if job is not None and job.state not in FINAL_STATES]
    except errors as exc:
        log.warning("%d released job(s) not published (%s); the sweep publishes them", len(job_ids), exc)
        return 0
    sent, error = publish_jobs(app, ((job, None) for job in jobs), errors, priority=DISPATCHED_PRIORITY)
    if error is not None:
        log.warning(
            "%d of %d released job(s) not published (%s); the sweep publishes them", len(jobs) - sent, len(jobs), error
        )
    try:
        store.postpone_checks([job.job_id for job in jobs[:sent]], check_in)
    except RedisError as exc:  # their deadlines stand: at worst the sweep sends a copy the claim refuses
        log.warning("released jobs' checks not postponed: %s", exc)
    return sent
