"""Celery's machinery, kept in this one module.

Pulse runs every job through one generic task, ``pulse.run_job(job_id, attempt=,
cycle=)``: the payload stays in the job store, so it never travels in the message
or shows in task events. The message names the attempt it starts (and the replay
cycle), so the job store can refuse a redelivered copy. Each message carries the
jobType as its display name (Celery's ``shadow``), so Flower lists jobTypes, and
the job's soft and hard time limits (Celery's ``timelimit`` header).

Delivery settings, and why:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only after
  its attempt is recorded; a killed pool child puts its message back at once.
- ``worker_prefetch_multiplier=1``: with late acks a busy pool reserves nothing
  beyond what it runs, so a worker that dies strands nothing that is not running
  (and running attempts are recovered through their lease).
- ``visibility_timeout``: the broker's own redelivery, a backstop only; it must
  exceed the longest time a message may stay unacked (``check_visibility_timeout``).
- ``worker_soft_shutdown_timeout``: with ``REMAP_SIGTERM=SIGQUIT`` (``pulse worker``
  sets it), SIGTERM gives running jobs this long, then cancels and requeues them.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

from pulse_core.errors import ConfigError
from pulse_core.jobs import Job
from pulse_core.policy import DEFAULT_HARD_TIMEOUT_GRACE_SECONDS
from pulse_core.settings import Settings

log = logging.getLogger("pulse.broker")

RUN_JOB_TASK = "pulse.run_job"
DEAD_LETTER_TASK = "pulse.dead_letter"
#: Environment for a worker process: SIGTERM starts Celery's soft shutdown (billiard
#: reads this at import, so it must be in the worker's environment, not set later).
WORKER_ENV = {"REMAP_SIGTERM": "SIGQUIT"}


class _PoisonSafeRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that an undecodable envelope is dropped with a log line.

    Stock kombu raises the decode error out of the consumer loop, which stops the
    worker ("Unrecoverable error"), and a restarted worker is free of it only
    because BRPOP already removed the message. Written by hand: kombu has no hook.
    """

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: the envelope itself
            log.error("dropped an undecodable broker message: %s", exc)
            return False

    def _get(self, queue: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._get(queue, *args, **kwargs)
        except ValueError as exc:
            log.error("dropped an undecodable broker message from %s: %s", queue, exc)
            raise Empty() from None


class PoisonSafeRedisTransport(kombu_redis.Transport):
    Channel = _PoisonSafeRedisChannel


_REDIS_TRANSPORT = f"{__name__}:{PoisonSafeRedisTransport.__name__}"


def create_celery(settings: Settings, *, main: str = "pulse") -> Celery:
    """A Celery app configured the Pulse way: JSON only, late acks, no result backend."""
    app = Celery(main, broker=settings.broker_url, set_as_current=False)
    if settings.broker_url.startswith("redis://"):  # rediss keeps stock kombu (TLS setup)
        app.conf.broker_transport = _REDIS_TRANSPORT
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        # The job store is the source of truth; Celery's results are not needed.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_soft_shutdown_timeout=settings.soft_shutdown_seconds,
        task_default_queue=settings.default_queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def time_limits(timeout_seconds: int | None) -> dict[str, int]:
    """Celery's per-message soft and hard time limits for a job's soft timeout."""
    if timeout_seconds is None:
        return {}
    return {
        "soft_time_limit": timeout_seconds,
        "time_limit": timeout_seconds + DEFAULT_HARD_TIMEOUT_GRACE_SECONDS,
    }


def publish_job(
    app: Celery, job: Job, *, attempt: int | None = None, countdown: float | None = None
) -> None:
    """Put one ``pulse.run_job`` message for ``job`` on its queue.

    ``attempt`` is the attempt the message starts (default: the next one);
    ``countdown`` delays it (a Celery ETA message).
    """
    app.send_task(
        RUN_JOB_TASK,
        args=(job.job_id,),
        kwargs={"attempt": job.attempts + 1 if attempt is None else attempt, "cycle": job.cycle},
        queue=job.queue,
        shadow=job.job_type,
        countdown=countdown,
        argsrepr=repr((job.job_id,)),
        kwargsrepr="{}",
        **time_limits(job.timeout_seconds),
    )


def check_visibility_timeout(settings: Settings, longest_timeout: int) -> None:
    """Refuse a broker visibility timeout that could redeliver a message still in use.

    A message stays unacked for at most its ETA (retries and delays up to
    ``PULSE_ETA_WINDOW_SECONDS``) plus its hard time limit.
    """
    if not settings.broker_url.startswith(("redis", "rediss", "unix")):
        return
    longest_timeout = max(longest_timeout, settings.timeout_cap_seconds)
    needed = longest_timeout + DEFAULT_HARD_TIMEOUT_GRACE_SECONDS + settings.eta_window_seconds
    if settings.visibility_timeout_seconds <= needed:
        raise ConfigError(
            f"PULSE_VISIBILITY_TIMEOUT_SECONDS={settings.visibility_timeout_seconds} is too "
            f"short: a message may stay unacked for {needed} s (longest time limit "
            f"{longest_timeout} s + {DEFAULT_HARD_TIMEOUT_GRACE_SECONDS} s hard-limit grace "
            f"+ PULSE_ETA_WINDOW_SECONDS={settings.eta_window_seconds}); raise it above {needed} "
            "or lower PULSE_TIMEOUT_CAP_SECONDS, the handlers' timeouts or the ETA window"
        )
