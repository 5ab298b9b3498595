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
- The Redis transport (``PulseRedisTransport``) keeps no unacked record in Redis: the
  ``BRPOP`` that takes a message reserves it, an ack writes nothing, and the job record,
  lease and watch deadline are the reservation (a message lost with its worker is
  republished by the recovery sweep). One ``BRPOP`` to fetch, the claim and the finalize
  scripts: three round trips a job.
- ``visibility_timeout``: kombu's redelivery of its unacked hash, which only a stock kombu
  consumer writes now; still checked against the longest time limit
  (``check_visibility_timeout``).
- ``worker_soft_shutdown_timeout``: with ``REMAP_SIGTERM=SIGQUIT`` (``pulse worker``
  sets it), SIGTERM gives running jobs this long, then cancels and requeues them.

Routing (``pulse_core.broker.routing``): every message of a job goes to the job's queue,
at the job's priority; with a Redis broker, jobs reach it through the fair dispatcher
(``pulse_core.store.dispatch``). Pulse's own publishes name the queue;
``JobRouter`` (the app's ``task_routes``) sends a ``pulse.run_job`` published without
a queue (a plain ``send_task``) to the same place, by reading the job record.
"""

from __future__ import annotations

import logging
import os
import weakref
from bisect import bisect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.transport.virtual import base as virtual_base
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from pulse_core import keys
from pulse_core.broker.message_template import MessageTemplate, render_message
from pulse_core.errors import ConfigError
from pulse_core.jobs import DEFAULT_PRIORITY, MAX_PRIORITY, Job
from pulse_core.policy import DEFAULT_HARD_TIMEOUT_GRACE_SECONDS
from pulse_core.redis_client import connect
from pulse_core.settings import Settings, is_redis_url
from pulse_core.store.dispatch import Dispatcher
from pulse_core.telemetry import tracing

log = logging.getLogger("pulse.broker")

RUN_JOB_TASK = "pulse.run_job"
DEAD_LETTER_TASK = "pulse.dead_letter"
#: Environment for a worker process: SIGTERM starts Celery's soft shutdown (billiard
#: reads this at import, so it must be in the worker's environment, not set later).
WORKER_ENV = {"REMAP_SIGTERM": "SIGQUIT"}


#: What a Redis that is restarting, failing over or out of memory raises.
_BROKER_FAULTS = (RedisError, OSError)


class _LeaseBackedQoS(kombu_redis.QoS):
    """kombu's Redis QoS without its unacked hash: a delivered message is held in the
    worker's memory only, and an ack or a reject writes nothing to Redis.

    Why this is safe: the message a BRPOP takes is already reserved by that one atomic pop,
    and the job record is the truth (every non-final job sits in the watch set with a
    deadline, ``docs/execution-guarantees.md``). A queued job whose message dies with its
    worker is republished by the recovery sweep at its queued check; a running one by its
    lapsed lease. kombu's bookkeeping (ZADD + HSET after the pop, ZREM + HDEL on the ack,
    each in MULTI/EXEC: 8 commands and 2 round trips a job) only re-delivered such a message
    after the one-hour visibility timeout, long after the sweep had, and a Redis crash
    between the pop and that second write lost it anyway.

    What still goes back to Redis, from memory (the message as it was delivered, marked
    redelivered): a message rejected with requeue (a killed pool child, a failure before the
    claim) at the back of its list; on close (warm shutdown) every message reserved and not
    acked, at the front. A push Redis refuses (down, ``OOM``, ``READONLY``) is never raised
    into Celery's consumer (stock kombu would stop the worker): it is kept and tried again on
    the poller's restore tick (every 10 s) until Redis takes it; on close it is logged and
    left to the sweep (the job is still ``queued`` in its record, so within
    ``PULSE_QUEUED_CHECK_SECONDS`` + a sweep interval). Entries an older worker left in
    kombu's unacked hash are still restored after the visibility timeout (``restore_visible``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: delivery tag -> (message, leftmost): pushes Redis refused, to try again.
        self._requeue_later: dict[Any, tuple[Any, bool]] = {}

    def append(self, message: Any, delivery_tag: Any) -> None:
        virtual_base.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        virtual_base.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            delivered: dict[Any, Any] = self._delivered  # type: ignore[assignment]
            local = delivered.get(delivery_tag)
            if local is not None:
                self._push_or_keep({delivery_tag: local}, leftmost=True)
        virtual_base.QoS.ack(self, delivery_tag)

    def _check_open(self) -> None:
        """Raise a broker fault if this QoS's channel is closed: kombu closes it when the
        connection is lost, and its Redis client is gone with it (an AttributeError that
        would end the worker as an "Unrecoverable error")."""
        if self.channel.connection is None:
            raise RedisConnectionError("channel closed: its connection to Redis was lost")

    def _push(self, messages: Iterable[Any], leftmost: bool, client: Any = None) -> None:
        """Put ``messages`` back on their lists, in one round trip (kombu's restore, from memory)."""
        self._check_open()
        with self.channel.conn_or_acquire(client) as conn, conn.pipeline(transaction=False) as pipe:
            for message in messages:
                info = message.delivery_info
                self.channel._do_restore_message(message._raw, info["exchange"], info["routing_key"], pipe, leftmost)
            pipe.execute()

    def _push_or_keep(self, messages: Mapping[Any, Any], leftmost: bool) -> None:
        try:
            self._push(messages.values(), leftmost)
        except _BROKER_FAULTS as exc:
            log.warning("could not requeue message(s) %s (%s); will try again", list(messages), exc)
            for tag, message in messages.items():
                self._requeue_later[tag] = (message, leftmost)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        delivered: dict[Any, Any] = self._delivered  # type: ignore[assignment]
        local = delivered.get(tag)
        if local is not None and tag not in self._dirty:  # type: ignore[operator]
            self._push([local], leftmost, client)
        else:  # an entry of kombu's unacked hash (restore_visible: left by an older worker)
            super().restore_by_tag(tag, client, leftmost)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        for tag, (local, leftmost) in list(self._requeue_later.items()):
            try:
                self._push([local], leftmost)
            except _BROKER_FAULTS as exc:
                log.warning("message %s still not requeued (%s); will try again", tag, exc)
                return
            del self._requeue_later[tag]
            log.info("message %s requeued", tag)
        try:
            super().restore_visible(*args, **kwargs)
        except _BROKER_FAULTS as exc:
            log.warning("could not restore messages past the visibility timeout (%s); will try again", exc)

    def restore_unacked(self, client: Any = None) -> None:
        """On close: every message reserved and not acked goes back to the front of its list."""
        self._flush()  # acked messages stay in _delivered until the next append: not those
        delivered: dict[Any, Any] = self._delivered  # type: ignore[assignment]
        pending = {tag: local for tag, (local, _) in self._requeue_later.items()}
        self._requeue_later.clear()
        back = [*pending.values(), *delivered.values()]
        delivered.clear()
        if not back:
            return
        try:
            self._push(back, False, client)
        except Exception as exc:  # the close path must never stop the worker
            log.error(
                "could not requeue %d reserved message(s) on close (%r); the recovery sweep republishes "
                "their jobs (PULSE_QUEUED_CHECK_SECONDS after they were queued)",
                len(back),
                exc,
            )


class _PoisonSafeRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that an undecodable envelope is dropped with a log line.

    Stock kombu raises the decode error out of the consumer loop, which stops the
    worker ("Unrecoverable error"), and a restarted worker is free of it only
    because BRPOP already removed the message. Written by hand: kombu has no hook.
    Its QoS keeps delivered messages in memory only and survives Redis outages
    (``_LeaseBackedQoS``).
    """

    QoS = _LeaseBackedQoS

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


class PulseRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport for Pulse's workers: poison-safe, outage-safe, and without
    kombu's unacked bookkeeping (``_LeaseBackedQoS``)."""

    Channel = _PoisonSafeRedisChannel


_REDIS_TRANSPORT = f"{__name__}:{PulseRedisTransport.__name__}"


def broker_priority(app: Celery, priority: int) -> int:
    """The message priority the broker understands for Pulse's ``priority`` (higher sooner).

    kombu's Redis transport serves *lower* numbers first, from one list per step of
    ``priority_steps`` (0, 3, 6, 9): Pulse sends ``9 - priority``, so on Redis the
    priorities fall into four bands served in order: 7-9, 4-6, 1-3, 0. RabbitMQ
    serves higher numbers first, all ten (queues declared with ``x-max-priority``).
    """
    priority = min(MAX_PRIORITY, max(0, priority))
    on_redis = _on_redis.get(app)
    if on_redis is None:  # read once per app: Celery's conf lookup costs more than the rest
        on_redis = _on_redis[app] = is_redis_url(str(app.conf.broker_url))
    if on_redis:
        return MAX_PRIORITY - priority
    return priority


#: Whether each Celery app's broker is Redis (``broker_priority``); dropped with the app.
_on_redis: weakref.WeakKeyDictionary[Celery, bool] = weakref.WeakKeyDictionary()


def redis_list(queue: str, broker_pri: int) -> str:
    """The Redis list kombu uses for ``queue`` at ``broker_pri`` (``Channel._q_for_pri``)."""
    steps = kombu_redis.Channel.priority_steps
    step = steps[bisect(steps, broker_pri) - 1]
    return f"{queue}{kombu_redis.Channel.sep}{step}" if step else queue


def waiting_lists(queue: str) -> list[str]:
    """Every Redis list that holds waiting messages of ``queue``: one per priority step,
    in the order of the steps (0, 3, 6, 9), as the dispatcher takes them."""
    steps = sorted(set(kombu_redis.Channel.priority_steps))
    return [redis_list(queue, step) for step in steps]


def queue_lists_checker(settings: Settings) -> Callable[[str, str, int], list[str]]:
    """For the recovery sweep: where a queued job of (queue, tenant, priority) waits: its
    ready set, the parked messages, then, when the broker is the job store's Redis, its
    queue's broker lists (another broker's cannot be read)."""
    if not publishes_inline(settings):
        return lambda queue, tenant, priority: [keys.ready(queue, tenant), keys.PARKED_MESSAGES]
    return lambda queue, tenant, priority: [keys.ready(queue, tenant), keys.PARKED_MESSAGES, *waiting_lists(queue)]


def dispatcher(settings: Settings, redis: Redis) -> Dispatcher:
    """The fair dispatcher (``pulse_core.store.dispatch``): its scripts push onto the broker's
    lists when the broker is the job store's Redis; with another broker the workers take
    the jobs from it and publish them (``publish_jobs``)."""
    lists = waiting_lists if publishes_inline(settings) else None
    return Dispatcher(redis, depth=settings.dispatch_depth, broker_lists=lists)


def destination(app: Celery, job: Job) -> tuple[str, int]:
    """(broker queue, broker priority) of ``job``'s messages: its queue, its priority."""
    return job.queue, broker_priority(app, job.priority)


class JobRouter:
    """Celery router: a ``pulse.run_job`` sent without a queue goes to its job's queue.

    Pulse's own publishes name the queue, and Celery's retries keep the queue they came
    from, so this only costs a Redis read for a bare ``send_task(RUN_JOB_TASK, (id,))``.
    """

    def __init__(self, redis: Redis, app: Celery) -> None:
        self._redis = redis
        self._app = app

    def __call__(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        options: Mapping[str, Any],
        task: Any = None,
        **_: Any,
    ) -> dict[str, Any] | None:
        if name != RUN_JOB_TASK or options.get("queue") or not args:
            return None
        fields = ["queue", "priority"]
        found: list[str | None] = self._redis.hmget(keys.job(str(args[0])), fields)  # type: ignore[assignment]
        queue, priority = found
        if not queue:
            return None  # no such job: Celery's default queue (the claim drops it there)
        pri = int(priority) if priority else DEFAULT_PRIORITY
        return {"queue": queue, "priority": broker_priority(self._app, pri)}


def create_celery(settings: Settings, *, main: str = "pulse", poison_safe: bool = True) -> Celery:
    """A Celery app configured the Pulse way: JSON only, late acks, no result backend.

    ``poison_safe=False`` keeps kombu's stock Redis transport: for an app that consumes
    no task messages (Flower), whose broker URL must then read ``redis://``.
    """
    app = Celery(main, broker=settings.broker_url, set_as_current=False)
    if poison_safe and settings.broker_url.startswith("redis://"):  # rediss keeps stock kombu (TLS setup)
        app.conf.broker_transport = _REDIS_TRANSPORT
    if not is_redis_url(settings.broker_url):
        # RabbitMQ honours priorities only on queues declared with x-max-priority.
        app.conf.task_queue_max_priority = MAX_PRIORITY
        app.conf.task_default_priority = DEFAULT_PRIORITY
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        # The job store is the source of truth; Celery's results are not needed.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        # A dead job's task fails (JobDead) after its record is final: ack it, never redeliver.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_soft_shutdown_timeout=settings.soft_shutdown_seconds,
        task_default_queue=settings.default_queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        enable_utc=True,
        task_routes=(JobRouter(connect(settings.redis_url), app),),
    )
    return app


#: A Redis broker's commands give up after this long (seconds) and its connects after
#: ``BROKER_CONNECT_TIMEOUT_SECONDS``, as the job store's own client does
#: (``pulse_core.redis_client.connect``). kombu's default is to wait forever: a worker whose
#: link to Redis went silent (a partition, no RST) on SIGTERM then never exited, its last
#: commands (requeue what it reserved, leave its control queue) blocked on a dead socket.
#: Above kombu's one-second ``BRPOP``, so an idle consumer never times out.
BROKER_SOCKET_TIMEOUT_SECONDS = 5.0
BROKER_CONNECT_TIMEOUT_SECONDS = 5.0


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's transport options for ``settings``' broker: with Redis, the visibility
    timeout and socket timeouts, so no broker command can block a worker for ever."""
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
    if is_redis_url(settings.broker_url):
        options["socket_timeout"] = BROKER_SOCKET_TIMEOUT_SECONDS
        options["socket_connect_timeout"] = BROKER_CONNECT_TIMEOUT_SECONDS
    return options


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


def time_limits(timeout_seconds: int | None) -> dict[str, int]:
    """Celery's per-message soft and hard time limits for a job's soft timeout."""
    if timeout_seconds is None:
        return {}
    return {
        "soft_time_limit": timeout_seconds,
        "time_limit": timeout_seconds + DEFAULT_HARD_TIMEOUT_GRACE_SECONDS,
    }


def message_options(job: Job, *, attempt: int | None = None, countdown: float | None = None) -> dict[str, Any]:
    """What every ``pulse.run_job`` message of ``job`` carries, however it is sent.

    ``attempt`` is the attempt the message starts (default: the next one);
    ``countdown`` delays it (a Celery ETA message).
    """
    return {
        "args": (job.job_id,),
        "kwargs": {"attempt": job.attempts + 1 if attempt is None else attempt, "cycle": job.cycle},
        "shadow": job.job_type,
        "countdown": countdown,
        "argsrepr": repr((job.job_id,)),
        "kwargsrepr": "{}",
        **time_limits(job.timeout_seconds),
    }


def publish_job(app: Celery, job: Job, *, attempt: int | None = None, countdown: float | None = None) -> None:
    """Put one ``pulse.run_job`` message for ``job`` on its queue, at its priority."""
    # The current app (a thread-local) is where publish signal receivers look the task up.
    app.set_current()
    queue, priority = destination(app, job)
    app.send_task(
        RUN_JOB_TASK,
        queue=queue,
        priority=priority,
        **message_options(job, attempt=attempt, countdown=countdown),
    )


def publish_jobs(
    app: Celery,
    jobs: Iterable[tuple[Job, float | None]],
    errors: tuple[type[Exception], ...],
    *,
    priority: int | None = None,
) -> tuple[int, Exception | None]:
    """Publish ``(job, countdown)`` pairs in order over one producer (at the broker priority
    ``priority`` when given: the dispatcher's, so its order is the order of delivery).

    Returns how many went and, when one of ``errors`` stopped it, that error: the
    first ``sent`` jobs are on the broker, the rest are not (the caller undoes those only).
    """
    sent = 0
    app.set_current()
    try:
        with app.producer_or_acquire() as producer:
            for job, countdown in jobs:
                queue, own = destination(app, job)
                app.send_task(
                    RUN_JOB_TASK,
                    queue=queue,
                    priority=own if priority is None else priority,
                    producer=producer,
                    **message_options(job, countdown=countdown),
                )
                sent += 1
    except errors as exc:
        return sent, exc
    return sent, None


def publishes_inline(settings: Settings) -> bool:
    """Whether jobs can be pushed by the admission script (broker is the job store's Redis)."""
    return settings.broker_url == settings.redis_url and is_redis_url(settings.broker_url)


def encode_message(app: Celery, job: Job, *, countdown: float | None = None) -> tuple[str, str]:
    """The ``pulse.run_job`` message for ``job`` exactly as kombu's Redis transport stores
    it, and the Redis list kombu would push it onto (its queue's list for its priority).

    Celery's task message (protocol 2) in kombu's envelope (``Channel.prepare_message``
    + ``basic_publish`` on the anonymous exchange, body base64-encoded), so workers,
    Flower and redelivery treat it like any other; rendered from a template built once
    per app and process through that same machinery (``message_template``).
    """
    queue, priority = destination(app, job)
    template = _templates.get(app)
    if template is None or template.pid != os.getpid():
        template = _templates[app] = MessageTemplate.build(app, RUN_JOB_TASK)
    limits = time_limits(job.timeout_seconds)
    # No publish signal fires for a message pushed by a script: carry the trace here.
    trace_headers: dict[str, str] = {}
    tracing.publish_context(trace_headers, RUN_JOB_TASK, job)
    message = render_message(
        template,
        job_id=job.job_id,
        job_type=job.job_type,
        attempt=job.attempts + 1,
        cycle=job.cycle,
        lane=queue,
        priority=priority,
        countdown=countdown,
        time_limit=limits.get("time_limit"),
        soft_time_limit=limits.get("soft_time_limit"),
        extra_headers=trace_headers,
    )
    return message, redis_list(queue, priority)


#: Each Celery app's message template (``encode_message``); dropped with the app.
_templates: weakref.WeakKeyDictionary[Celery, MessageTemplate] = weakref.WeakKeyDictionary()


def check_visibility_timeout(settings: Settings, longest_timeout: int) -> None:
    """Refuse a broker visibility timeout that could redeliver a message still in use.

    A message stays unacked for at most its ETA (retries and delays up to
    ``PULSE_ETA_WINDOW_SECONDS``) plus its hard time limit.
    """
    if not is_redis_url(settings.broker_url):
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
