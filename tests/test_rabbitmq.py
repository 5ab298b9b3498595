"""Pulse on RabbitMQ, the second broker: jobs published to it, counted on it.

These tests need a RabbitMQ at ``PULSE_TEST_AMQP_URL`` (default 127.0.0.1:5672, guest);
where none answers they skip and say so. CI's machine runs one.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import publish_counter
import pytest
from celery import Celery
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import create_celery
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.amqp import AMQP_URL, delete_queue, needs_rabbitmq
from tests.conftest import DIAG_TYPES
from tests.support import (
    WorkerProcess,
    auth,
    running_workers,
    scrape_api,
    settings_env,
    wait_for,
    wait_for_state,
    write_tenants_file,
)

pytestmark = needs_rabbitmq


def test_jobs_queued_on_rabbitmq_are_counted_in_the_queue_depth(settings: Settings, redis: Redis) -> None:
    # given an API whose broker is RabbitMQ, on a queue of this test's own (no worker reads it)
    queue = f"t-amqp-depth-{uuid.uuid4().hex[:8]}"
    api_settings = replace(settings, broker_url=AMQP_URL, default_queue=queue)
    announce(redis, ["diag.echo"], 60)
    client = create_app(api_settings).test_client()
    app = create_celery(api_settings)
    try:
        # when 5 jobs of acme and 3 of globex are submitted
        for tenant, n in (("acme", 5), ("globex", 3)):
            for _ in range(n):
                response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth(tenant))
                assert response.status_code == 202, response.get_data(as_text=True)
        # then the queue depth the API exports counts all 8, waiting on the one queue
        assert f'pulse_queue_depth{{queue="{queue}"}} 8.0' in scrape_api(client)
    finally:
        with app.connection_for_write() as connection:
            channel = connection.channel()
            for name in (queue,):
                try:
                    channel.queue_delete(name)
                except Exception:  # never declared: nothing to delete
                    channel = connection.channel()


@pytest.fixture
def amqp_settings(settings: Settings, own_redis: Redis) -> Settings:
    """Settings whose broker is RabbitMQ and whose job store is a Redis of the test's own, so
    no session worker (whose broker is the session's Redis) releases or sweeps its jobs."""
    found = own_redis.connection_pool.connection_kwargs
    return replace(settings, redis_url=f"redis://{found['host']}:{found['port']}/0", broker_url=AMQP_URL)


def test_a_priority_9_flood_delays_another_tenants_job_by_a_few_dispatches_on_rabbitmq(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a RabbitMQ queue of this test's own, kept 2 ready messages deep
    queue = f"t-amqp-fair-{uuid.uuid4().hex[:8]}"
    local = replace(settings, broker_url=AMQP_URL, default_queue=queue, dispatch_depth=2)
    client = create_app(local).test_client()
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[queue], concurrency=1).start()
    a_ids: list[str] = []
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        # when tenant A floods 300 jobs at priority 9
        flood = [{"jobType": "diag.sleep", "payload": {"seconds": 0.05}, "options": {"priority": 9}}] * 300
        answer = client.post("/v1/batches", json={"jobs": flood}, headers=auth("acme"))
        a_ids = [item["job"]["jobId"] for item in answer.get_json()["items"]]
        assert len(a_ids) == 300
        wait_for_state(client, "acme", a_ids[3], {"succeeded"}, timeout=60)
        # and, while it drains, tenant B submits one job at the default priority
        response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("globex"))
        b_queued = datetime.now(UTC)  # its admission answered: it waits in its ready set
        b_doc = wait_for_state(client, "globex", response.get_json()["jobId"], {"succeeded"}, timeout=60)
        # then B's job started after a few of A's only (the ready ones, the one running and
        # one the dispatcher may have published as B arrived), most of A's flood still waiting
        at = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
        a_docs = [client.get(f"/v1/jobs/{j}", headers=auth("acme")).get_json() for j in a_ids]
        ahead = [d for d in a_docs if d.get("startedAt") and b_queued < at(d["startedAt"]) < at(b_doc["startedAt"])]
        assert len(ahead) <= 4, f"{len(ahead)} of A's jobs started before B's"
        assert sum(d["state"] == "queued" for d in a_docs) > 200
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()
        delete_queue(create_celery(local), queue)


def test_max_concurrency_holds_across_two_workers_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, two workers on a RabbitMQ queue
    queue = f"t-amqp-slots-{uuid.uuid4().hex[:8]}"
    path = write_tenants_file(tmp_path / "tenants.toml", extra='[job_types."limited.slots"]\nmax_concurrency = 1\n')
    local = replace(
        amqp_settings,
        broker_url=AMQP_URL,
        default_queue=queue,
        tenants_file=path,
        handler_modules=("pulse_worker.diagnostics", "limited_handlers"),
    )
    for what in ("running", "starts", "concurrent"):
        own_redis.delete(f"limited:limited.slots:{what}")
    client = create_app(local).test_client()
    try:
        with running_workers(own_redis, local, tmp_path, ["limited.slots"], concurrency=2, queues=[queue]):
            # when 30 short jobs are submitted at once
            batch = [{"jobType": "limited.slots", "payload": {"seconds": 0.02}}] * 30
            answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
            items = answer["items"]
            docs = [wait_for_state(client, "acme", i["job"]["jobId"], {"succeeded"}, timeout=120) for i in items]
    finally:
        delete_queue(create_celery(local), queue)
    # then each ran once, at its first attempt, never two at once
    assert {d["attempts"] for d in docs} == {1}
    concurrent = [int(x) for x in own_redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 30 and max(concurrent) == 1


def _limited_on_rabbitmq(settings: Settings, tmp_path: Path, name: str, extra: str) -> Settings:
    """Settings on a RabbitMQ queue of the test's own, with the limited handlers and ``extra``
    in the tenants file."""
    path = write_tenants_file(tmp_path / "tenants.toml", extra=extra)
    return replace(
        settings,
        broker_url=AMQP_URL,
        default_queue=f"t-amqp-{name}-{uuid.uuid4().hex[:8]}",
        tenants_file=path,
        handler_modules=("pulse_worker.diagnostics", "limited_handlers", "publish_counter"),
    )


def _counted_publishes(redis: Redis) -> dict[str, int]:
    """What the workers published with an ETA or as a Celery retry (``publish_counter``)."""
    return {key: int(redis.get(key) or 0) for key in (publish_counter.ETA, publish_counter.RETRIES)}


NONE_COUNTED = {publish_counter.ETA: 0, publish_counter.RETRIES: 0}


@contextlib.contextmanager
def _sampled(read: Callable[[], int], every: float = 0.005) -> Iterator[list[int]]:
    """``read()`` sampled in a thread while the block runs (the list fills as it goes)."""
    samples: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            samples.append(read())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def _clear_limited(redis: Redis, job_type: str) -> None:
    redis.delete(publish_counter.ETA, publish_counter.RETRIES)
    for what in ("running", "starts", "concurrent"):
        redis.delete(f"limited:{job_type}:{what}")


def test_jobs_over_max_concurrency_are_parked_not_deferred_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, two workers of two processes on RabbitMQ
    local = _limited_on_rabbitmq(amqp_settings, tmp_path, "park", '[job_types."limited.slots"]\nmax_concurrency = 1\n')
    _clear_limited(own_redis, "limited.slots")
    slots = keys.concurrency("limited.slots")
    client = create_app(local).test_client()
    queues = [local.default_queue]
    try:
        with (
            running_workers(own_redis, local, tmp_path, ["limited.slots"], concurrency=2, queues=queues),
            _sampled(lambda: own_redis.zcard(keys.parked(slots))) as parked,
        ):
            # when 60 short jobs are submitted at once
            batch = [{"jobType": "limited.slots", "payload": {"seconds": 0.02}}] * 60
            answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
            ids = [item["job"]["jobId"] for item in answer["items"]]
            docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=180) for job_id in ids]
    finally:
        delete_queue(create_celery(local), local.default_queue)
    # then none was lost, each ran once at its first attempt, never two at once
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    concurrent = [int(x) for x in own_redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert len(concurrent) == 60 and max(concurrent) == 1
    # and the jobs that waited were parked in Redis, not sent back with a countdown: no
    # deferral (ETA) message and no Celery retry was published
    assert max(parked) > 0
    assert _counted_publishes(own_redis) == NONE_COUNTED
    # and nothing is left parked or held
    assert own_redis.zcard(slots) == 0 and own_redis.zcard(keys.parked(slots)) == 0
    assert not own_redis.hexists(keys.PARKED_SLOTS, slots)
    assert own_redis.hmget(keys.PARKED_MESSAGES, ids) == [None] * len(ids)


@pytest.mark.slow
def test_the_next_parked_job_starts_within_the_lease_when_the_slot_holders_worker_is_killed_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given limited.slots held to one run at a time, two one-process workers on a RabbitMQ
    # queue, a long job running and three short ones parked behind it
    local = _limited_on_rabbitmq(amqp_settings, tmp_path, "kill", '[job_types."limited.slots"]\nmax_concurrency = 1\n')
    _clear_limited(own_redis, "limited.slots")
    client = create_app(local).test_client()
    workers = [
        WorkerProcess(settings_env(local), tmp_path / f"w{n}.log", queues=[local.default_queue], concurrency=1)
        for n in range(2)
    ]
    long_job = ""
    try:
        for worker in workers:
            worker.start().wait_ready(own_redis, ["limited.slots"])

        def post(seconds: float, **options: int) -> str:
            body = {"jobType": "limited.slots", "payload": {"seconds": seconds}, "options": options}
            return str(client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"])

        # (the long job is not retried: its recovery ends it dead and frees the slot)
        long_job = post(600, maxRetries=0)
        running = wait_for_state(client, "acme", long_job, {"running"}, timeout=30)
        short = [post(0.01) for _ in range(3)]
        wait_for(lambda: own_redis.zcard(keys.parked(keys.concurrency("limited.slots"))) == 3, timeout=30)
        # when the worker running the long job is SIGKILLed (RabbitMQ redelivers its unacked
        # message to the other worker at once)
        owner = str(own_redis.hget(keys.job(long_job), "owner"))
        holder = next(w for w in workers if w.runs(owner))
        killed_at = time.time()
        holder.kill_group()
        # then the next parked job starts on the other worker within the lease (plus a tick)
        first = wait_for_state(client, "acme", short[0], {"succeeded"}, timeout=60)
        started = datetime.fromisoformat(first["startedAt"].replace("Z", "+00:00")).timestamp()
        assert started - killed_at <= local.lease_seconds + 3.0, started - killed_at
        for job_id in short[1:]:
            wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=60)
        # and the long job's attempt never ran twice: it ends dead, lost with its worker, found
        # when its lease lapsed (the copy RabbitMQ redelivered, parked on the full slot, did
        # not put its check off)
        assert running["attempts"] == 1
        dead = wait_for_state(client, "acme", long_job, {"dead"}, timeout=60)
        assert (dead["attempts"], dead["error"]["type"]) == (1, "WorkerLost")
        finished = datetime.fromisoformat(dead["finishedAt"].replace("Z", "+00:00")).timestamp()
        assert finished - killed_at <= local.lease_seconds + 5.0, finished - killed_at
    finally:
        if long_job:
            client.post(f"/v1/jobs/{long_job}/cancel", headers=auth("acme"))
        for worker in workers:
            worker.stop()
        delete_queue(create_celery(local), local.default_queue)
    # and the short ones ran one at a time (the killed run never counted itself out: 1 + 1)
    concurrent = [int(x) for x in own_redis.lrange("limited:limited.slots:concurrent", 0, -1)]
    assert concurrent == [1, 2, 2, 2]


def test_a_rate_limited_job_type_parks_until_its_window_allows_without_copies_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given limited.rate held to 5 starts in any 2 seconds, two workers on RabbitMQ
    local = _limited_on_rabbitmq(
        amqp_settings, tmp_path, "rate", '[job_types."limited.rate"]\nrate_limit = "5/2second"\n'
    )
    _clear_limited(own_redis, "limited.rate")
    client = create_app(local).test_client()
    queues = [local.default_queue]
    try:
        with (
            running_workers(own_redis, local, tmp_path, ["limited.rate"], concurrency=2, queues=queues),
            _sampled(lambda: own_redis.zcard(keys.PARKED_UNTIL)) as parked,
        ):
            # when 15 jobs are submitted at once
            batch = [{"jobType": "limited.rate", "payload": {}}] * 15
            answer = client.post("/v1/batches", json={"jobs": batch}, headers=auth("acme")).get_json()
            ids = [item["job"]["jobId"] for item in answer["items"]]
            docs = [wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=120) for job_id in ids]
    finally:
        delete_queue(create_celery(local), local.default_queue)
    # then each ran exactly once, at its first attempt (no copy ran, none was lost)
    assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
    starts = sorted(float(x) for x in own_redis.lrange("limited:limited.rate:starts", 0, -1))
    assert len(starts) == 15
    # and never more than 5 started in any 2-second window
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 2.0) <= 5, starts
    # and the waiting ones were parked in Redis until the window allowed, not sent back with a countdown
    assert max(parked) > 0
    assert _counted_publishes(own_redis) == NONE_COUNTED
    assert own_redis.zmscore(keys.PARKED_UNTIL, ids) == [None] * len(ids)


def _held_by_workers(app: Celery, *, tries: int = 5) -> list[Any]:
    """The task messages the workers hold without running them: ETA messages (scheduled)
    and prefetched ones (reserved), as the workers answer a broadcast inspect (asked again
    when no answer came in time: the machine is shared and slow at times)."""
    for _ in range(tries):
        inspect = app.control.inspect(timeout=2.0)
        scheduled, reserved = inspect.scheduled(), inspect.reserved()
        if scheduled and reserved:
            return [request for held in (scheduled, reserved) for requests in held.values() for request in requests]
    raise AssertionError(f"no worker answered the inspect in {tries} tries")


def test_a_delayed_job_waits_parked_in_redis_not_as_an_eta_message_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker on a RabbitMQ queue of this test's own
    local = _counting_on_rabbitmq(amqp_settings, "delay")
    own_redis.delete(publish_counter.ETA, publish_counter.RETRIES)
    client = create_app(local).test_client()
    app = create_celery(local)
    try:
        with running_workers(
            own_redis, local, tmp_path, DIAG_TYPES, concurrency=1, queues=[local.default_queue], count=1
        ):
            # when a job is submitted with a 10-second delay
            body = {"jobType": "diag.echo", "payload": {}, "options": {"delaySeconds": 10}}
            job_id = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"]
            submitted = time.time()
            # then, while it waits, it is parked in Redis and no worker holds a message for it
            assert own_redis.zscore(keys.PARKED_UNTIL, job_id) is not None
            assert _held_by_workers(app) == []
            assert client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()["state"] == "scheduled"
            # and it starts when due, once
            doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)
    finally:
        delete_queue(app, local.default_queue)
    assert (doc["state"], doc["attempts"]) == ("succeeded", 1)
    started = datetime.fromisoformat(doc["startedAt"].replace("Z", "+00:00")).timestamp()
    assert submitted + 9.9 <= started <= submitted + 10.0 + 3.0
    assert own_redis.zscore(keys.PARKED_UNTIL, job_id) is None
    assert _counted_publishes(own_redis) == NONE_COUNTED


def _counting_on_rabbitmq(settings: Settings, name: str) -> Settings:
    """Settings on a RabbitMQ queue of the test's own, the diagnostic handlers and ``publish_counter``."""
    return replace(
        settings,
        broker_url=AMQP_URL,
        default_queue=f"t-amqp-{name}-{uuid.uuid4().hex[:8]}",
        handler_modules=("pulse_worker.diagnostics", "publish_counter"),
    )


def test_a_retry_backoff_waits_parked_in_redis_not_as_an_eta_message_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a worker on a RabbitMQ queue of this test's own
    local = _counting_on_rabbitmq(amqp_settings, "retry")
    own_redis.delete(publish_counter.ETA, publish_counter.RETRIES)
    client = create_app(local).test_client()
    app = create_celery(local)
    try:
        with (
            running_workers(
                own_redis, local, tmp_path, DIAG_TYPES, concurrency=1, queues=[local.default_queue], count=1
            ),
            _sampled(lambda: own_redis.zcard(keys.PARKED_UNTIL)) as parked,
        ):
            # when a job fails twice before it succeeds (diag.flaky: backoff 0.5 s, at most 2 s)
            body = {"jobType": "diag.flaky", "payload": {"failTimes": 2}}
            job_id = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"]
            doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)
    finally:
        delete_queue(app, local.default_queue)
    # then it succeeded at its third attempt
    assert (doc["state"], doc["attempts"]) == ("succeeded", 3)
    # and its backoffs waited parked in Redis: no Celery retry (an ETA message) was published
    assert max(parked) > 0
    assert _counted_publishes(own_redis) == NONE_COUNTED
    assert own_redis.zscore(keys.PARKED_UNTIL, job_id) is None


def test_a_tenants_delayed_jobs_due_at_once_do_not_hold_back_another_tenants_job_on_rabbitmq(
    amqp_settings: Settings, own_redis: Redis, tmp_path: Path
) -> None:
    # given a one-process worker on a RabbitMQ queue of this test's own (found in review: the jobs
    # released when due were published straight to the queue, and about 30 of these 100 went ahead of
    # B's job)
    local = replace(amqp_settings, default_queue=f"t-amqp-due-{uuid.uuid4().hex[:8]}")
    client = create_app(local).test_client()
    worker = WorkerProcess(settings_env(local), tmp_path / "w.log", queues=[local.default_queue], concurrency=1)
    a_ids: list[str] = []
    try:
        worker.start().wait_ready(own_redis, DIAG_TYPES)
        # when tenant A has 100 jobs due at the same instant, a few seconds on
        run_at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat().replace("+00:00", "Z")
        body = {"jobType": "diag.echo", "payload": {}, "options": {"runAt": run_at}}
        answer = client.post("/v1/batches", json={"jobs": [body] * 100}, headers=auth("acme")).get_json()
        a_ids = [item["job"]["jobId"] for item in answer["items"]]
        assert len(a_ids) == 100
        # and tenant B submits one job once they are due and the first of them has started
        wait_for(lambda: any(d.get("startedAt") for d in _docs(client, "acme", a_ids[:50])), timeout=30)
        response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("globex"))
        b_queued = datetime.now(UTC)
        b_doc = wait_for_state(client, "globex", response.get_json()["jobId"], {"succeeded"}, timeout=60)
        # then B's job starts after a few of A's only, as it would had A submitted them all now
        # (they join A's ready set when due, as on Redis, and are published in A's turns)
        ahead = [
            d for d in _docs(client, "acme", a_ids) if d.get("startedAt") and b_queued < _started(d) < _started(b_doc)
        ]
        assert len(ahead) <= 5, f"{len(ahead)} of A's jobs started after B's was queued and before it"
    finally:
        for job_id in a_ids:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        worker.stop()
        delete_queue(create_celery(local), local.default_queue)


def _docs(client: Any, tenant: str, job_ids: list[str]) -> list[dict[str, Any]]:
    return [client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).get_json() for job_id in job_ids]


def _started(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(doc["startedAt"]).replace("Z", "+00:00"))
