"""The fair dispatcher at scale (``pulse_core.store.dispatch``), driven as workers drive it:
take a message off the queue's list, finish its job (the finalize script dispatches the next).

Counted in Redis commands, not time: the machine is shared, the count is not.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import create_celery, waiting_lists
from pulse_core.guards.admission import Admission, Submission
from pulse_core.guards.execution_limits import ExecutionGate, ParkedMessage
from pulse_core.jobs import Job, JobState, utc_now
from pulse_core.settings import Settings
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.job_store import JobStore
from pulse_core.tenants import Tenant
from tests.conftest import DIAG_TYPES
from tests.support import WorkerProcess, auth, settings_env, wait_for_state, waiting_messages

QUEUE = "t-dispatch"
DEPTH = 16


def _enqueue(redis: Redis, dispatcher: Dispatcher, tenants: list[str], per_tenant: int) -> None:
    """Each tenant's jobs, let in round by round (every tenant's first, then every second...)
    through the admission script, which records each and places it (its ready set, or straight
    onto the queue while no tenant waits), as ``POST /v1/jobs`` does."""
    admission = Admission(redis, idempotency_ttl_seconds=60, dispatcher=dispatcher)
    created = utc_now()
    for round_no in range(per_tenant):
        for tenant_id in tenants:
            tenant = Tenant(tenant_id=tenant_id, api_key_sha256=(), rate_limit="1000000/second")
            job = Job(
                job_id=f"{tenant_id}.{round_no}",
                tenant_id=tenant_id,
                job_type="diag.echo",
                queue=QUEUE,
                created_at=created,
            )
            admitted = admission.admit(tenant, Submission(job=job, message=f"m|{job.job_id}", enqueue=True))
            assert admitted.published and not admitted.replayed


def _drain(redis: Redis, store: JobStore, limit: int | None = None) -> list[str]:
    """Take messages as a worker would and finish their jobs (each finalize dispatches the
    next); the job ids in the order they were taken."""
    taken: list[str] = []
    queue_list = waiting_lists(QUEUE)[0]
    while limit is None or len(taken) < limit:
        batch = redis.rpop(queue_list, DEPTH) or []
        if not batch:
            break
        ids = [message.split("|", 1)[1] for message in batch]
        taken += ids
        for job_id in ids:
            tenant = job_id.rsplit(".", 1)[0]
            job = Job(job_id=job_id, tenant_id=tenant, job_type="diag.echo", queue=QUEUE, created_at="")
            assert store.finalize(job, JobState.SUCCEEDED, result_json="null", from_="waiting")
    return taken


def _commands(redis: Redis) -> int:
    stats = redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


def _commands_per_job(redis: Redis, take: Callable[..., list[str]], *args: object, n: int) -> tuple[float, list[str]]:
    """Redis commands per job taken over the next ``n`` jobs by ``take(redis, *args, limit=n)``
    (``_drain``: RPOP, finalize and the dispatch it runs; ``_take``: the pump's take and
    finalize), and those jobs."""
    redis.config_resetstat()
    taken = take(redis, *args, limit=n)
    return _commands(redis) / len(taken), taken


def _submit_costs(redis: Redis, dispatcher: Dispatcher, tenant_id: str, n: int, tag: str) -> list[Counter[str]]:
    """The Redis commands (``INFO commandstats``: the script's own, and the EVALSHA) of each of
    ``n`` jobs of ``tenant_id`` (ids ``<tenant>.<tag><i>``) let in one by one through the
    admission script, as ``POST /v1/jobs`` does."""
    admission = Admission(redis, idempotency_ttl_seconds=60, dispatcher=dispatcher)
    tenant = Tenant(tenant_id=tenant_id, api_key_sha256=(), rate_limit="1000000/second")
    costs: list[Counter[str]] = []
    for i in range(n):
        job = Job(
            job_id=f"{tenant_id}.{tag}{i}", tenant_id=tenant_id, job_type="diag.echo", queue=QUEUE, created_at=utc_now()
        )
        redis.config_resetstat()
        assert admission.admit(tenant, Submission(job=job, message=f"m|{job.job_id}", enqueue=True)).published
        stats = redis.info("commandstats")
        costs.append(
            Counter(
                {
                    k.removeprefix("cmdstat_"): int(v["calls"])
                    for k, v in stats.items()
                    if k not in ("cmdstat_config", "cmdstat_info")
                }
            )
        )
    return costs


def test_a_submit_costs_twelve_redis_commands_its_queue_short_or_full(own_redis: Redis) -> None:
    # given a tenant with a job in already (its counters made, the script loaded)
    redis = own_redis
    dispatcher = Dispatcher(redis, depth=DEPTH, broker_lists=waiting_lists)
    _submit_costs(redis, dispatcher, "cost", 1, "warm")
    # when it submits until its queue holds DEPTH messages, and a few more that wait behind
    costs = _submit_costs(redis, dispatcher, "cost", DEPTH + 3, "c")
    for cost in costs:
        # one script call (the bench counts the commands it runs, as here, and the calls apart)
        assert cost.pop("evalsha") == 1
        # (the index's trim runs once per hundredth of its horizon, 1 h 41 min: not counted)
        cost.pop("zremrangebyscore", None)
    short, full = costs[: DEPTH - 1], costs[DEPTH + 1 :]
    # then each costs 12 commands, the scripts' own included: onto the queue while it is short
    assert {sum(cost.values()) for cost in short} == {12}, short
    assert all(cost["lpush"] == 1 and cost["hset"] == 2 for cost in short)
    # and into the tenant's ready set once it is full (the message kept in the record)
    assert {sum(cost.values()) for cost in full} == {12}, full
    assert all(cost["zadd"] == 3 and "lpush" not in cost and cost["hset"] == 2 for cost in full)
    # and every job of the ready set is there in order of arrival
    assert redis.zrange(keys.ready(QUEUE, "cost"), 0, -1) == [f"cost.c{i}" for i in range(DEPTH - 1, DEPTH + 3)]


def test_ten_thousand_tenants_drain_in_fair_order_at_the_cost_of_ten(own_redis: Redis) -> None:
    redis = own_redis
    dispatcher = Dispatcher(redis, depth=DEPTH, broker_lists=waiting_lists)
    store = JobStore(redis, dispatcher=dispatcher)
    # given 10 tenants with 100 jobs each: the cost of a dispatch while none runs dry
    _enqueue(redis, dispatcher, [f"few-{i:02d}" for i in range(10)], 100)
    few, _ = _commands_per_job(redis, _drain, store, n=320)
    _drain(redis, store)
    # and 10,000 tenants with 2 jobs each
    many_tenants = [f"t{i:05d}" for i in range(10_000)]
    _enqueue(redis, dispatcher, many_tenants, 2)
    # when workers take their jobs (the cost read over the first jobs, as for 10 tenants)
    many, first = _commands_per_job(redis, _drain, store, n=320)
    taken = [*first, *_drain(redis, store)]
    print(f"Redis commands per job taken: {few:.2f} with 10 tenants, {many:.2f} with 10,000")
    # then a dispatch costs the same Redis commands with 10,000 tenants as with 10
    assert many <= few + 0.5, (few, many)
    # and every job ran once, in fair order: every tenant's first job within the first 10,000
    # taken, but for the few dispatched at once while the queue was short (their tenants went
    # idle and came back with their second job, at the virtual time of the moment)
    assert len(taken) == 20_000 and len(set(taken)) == 20_000
    firsts = {job_id for job_id in taken[: 10_000 + DEPTH] if job_id.endswith(".0")}
    assert len(firsts) == 10_000
    tenants_in_first_half = {job_id.rsplit(".", 1)[0] for job_id in taken[:10_000]}
    assert len(tenants_in_first_half) >= 10_000 - DEPTH
    # and nothing is left: idle tenants cost nothing
    assert redis.zcard(keys.active(QUEUE)) == 0
    assert not redis.exists(keys.dispatch_state(QUEUE))
    with redis.pipeline(transaction=False) as pipe:
        for job_id in taken:
            pipe.hexists(keys.job(job_id), "message")  # a waiting job's message leaves its record
        assert not any(pipe.execute())
    assert not list(redis.scan_iter(match=keys.ready_prefix(QUEUE) + "*"))
    assert not redis.sismember(keys.DISPATCH_QUEUES, QUEUE)


def _take(redis: Redis, dispatcher: Dispatcher, store: JobStore, limit: int | None = None) -> list[str]:
    """As the workers' pump does with a broker other than this Redis (RabbitMQ): take up to a
    depth of waiting jobs in fair order, publish them (here: finish them at once); the job ids
    in the order they were taken."""
    taken: list[str] = []
    while limit is None or len(taken) < limit:
        ids = dispatcher.take(QUEUE, DEPTH)
        if not ids:
            break
        taken += ids
        for job_id in ids:
            job = Job(
                job_id=job_id, tenant_id=job_id.rsplit(".", 1)[0], job_type="diag.echo", queue=QUEUE, created_at=""
            )
            assert store.finalize(job, JobState.SUCCEEDED, result_json="null", from_="waiting")
    return taken


def test_ten_thousand_tenants_are_taken_in_fair_order_at_the_cost_of_ten_for_another_broker(
    own_redis: Redis,
) -> None:
    redis = own_redis
    # given a dispatcher for a broker other than this Redis (RabbitMQ: the pump publishes what
    # it takes), and 10 tenants with 100 jobs each: the cost of a take while none runs dry
    dispatcher = Dispatcher(redis, depth=DEPTH, broker_lists=None)
    store = JobStore(redis, dispatcher=dispatcher)
    _enqueue(redis, dispatcher, [f"few-{i:02d}" for i in range(10)], 100)
    few, _ = _commands_per_job(redis, _take, dispatcher, store, n=320)
    _take(redis, dispatcher, store)
    # and 10,000 tenants with 2 jobs each
    _enqueue(redis, dispatcher, [f"t{i:05d}" for i in range(10_000)], 2)
    # when the pump takes their jobs (the cost read over the first jobs, as for 10 tenants)
    many, first = _commands_per_job(redis, _take, dispatcher, store, n=320)
    taken = [*first, *_take(redis, dispatcher, store)]
    print(f"Redis commands per job taken: {few:.2f} with 10 tenants, {many:.2f} with 10,000")
    # then a take costs the same Redis commands with 10,000 tenants as with 10
    assert many <= few + 0.5, (few, many)
    # and every job was taken once, in fair order: every tenant's first job before any second
    assert len(taken) == 20_000 and len(set(taken)) == 20_000
    assert all(job_id.endswith(".0") for job_id in taken[:10_000])
    # and nothing is left: idle tenants cost nothing
    assert redis.zcard(keys.active(QUEUE)) == 0
    assert not redis.exists(keys.dispatch_state(QUEUE))
    assert not list(redis.scan_iter(match=keys.ready_prefix(QUEUE) + "*"))
    assert not redis.sismember(keys.DISPATCH_QUEUES, QUEUE)


def held_by_workers(settings: Settings, queue: str) -> list[dict]:
    """The messages of ``queue`` the live workers have reserved or hold as ETA messages."""
    inspector = create_celery(settings).control.inspect(timeout=2.0)
    held = [request for requests in (inspector.reserved() or {}).values() for request in requests]
    held += [entry["request"] for entries in (inspector.scheduled() or {}).values() for entry in entries]
    return [request for request in held if (request.get("delivery_info") or {}).get("routing_key") == queue]


@pytest.mark.slow
def test_delayed_jobs_wait_in_redis_and_all_start_when_due(
    isolated_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given two workers on a queue of this test's own
    client = create_app(isolated_settings).test_client()
    queue = isolated_settings.default_queue
    workers = [
        WorkerProcess(settings_env(isolated_settings), tmp_path / f"w{n}.log", queues=[queue], concurrency=2)
        for n in range(2)
    ]
    try:
        for worker in workers:
            worker.start().wait_ready(redis, DIAG_TYPES)
        # when 2,000 jobs are submitted due at the same instant, 8 seconds on
        run_at = (datetime.now(UTC) + timedelta(seconds=8)).isoformat().replace("+00:00", "Z")
        body = {"jobType": "diag.echo", "payload": {}, "options": {"runAt": run_at}}
        due = datetime.fromisoformat(run_at.replace("Z", "+00:00"))
        ids: list[str] = []
        while len(ids) < 2000:  # (within acme's rate limit of 1000/second)
            answer = client.post("/v1/batches", json={"jobs": [body] * 250}, headers=auth("acme")).get_json()
            ids += [item["job"]["jobId"] for item in answer["items"] if "job" in item]
        # then until they are due they wait parked in Redis: no message on the queue, none
        # reserved by a worker (kombu's unacked messages)
        assert redis.zmscore(keys.PARKED_UNTIL, ids) == [pytest.approx(due.timestamp(), abs=1.0)] * len(ids)
        assert waiting_messages(redis, queue) == 0
        unacked = [json.loads(raw) for raw in redis.hvals("unacked")]
        assert not [entry for entry in unacked if entry[2] == queue]
        # (Pulse's transport keeps what a worker reserved in its memory: ask the workers too)
        assert not held_by_workers(isolated_settings, queue)
        # and once due every one of them starts (within 60 s of the due time)
        docs = [wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=90) for job_id in ids]
    finally:
        for worker in workers:
            worker.stop()
    last_start = max(datetime.fromisoformat(d["startedAt"].replace("Z", "+00:00")) for d in docs)
    print(f"2,000 jobs due at once: the last started {(last_start - due).total_seconds():.1f} s after due")
    assert (last_start - due).total_seconds() <= 60
    assert {d["attempts"] for d in docs} == {1}


def test_a_job_released_when_due_waits_in_the_ready_set_keys_py_names_whatever_its_tenant_id(
    own_redis: Redis,
) -> None:
    # given a delayed job of a tenant whose id holds a key separator and an escape, parked
    # until now (release_due.lua builds its ready set's key itself, from keys.py's shapes)
    redis, tenant, queue, job_id = own_redis, "a:b%3Ac%", "q-escaped", "esc.0"
    redis.hset(keys.job(job_id), mapping={"state": "scheduled", "queue": queue, "tenantId": tenant})
    gate = ExecutionGate(redis, grace_seconds=1.0)
    assert gate.park_until(job_id, 0.0, ParkedMessage(waiting_lists(queue)[0], "m|esc.0", tenant))
    # when the workers' tick releases what is due
    gate.release_parked()
    # then the job waits in its tenant's ready set of its queue, under the keys keys.py names,
    # its tenant active on the queue and its message in its record, nothing on the queue's list
    assert redis.zscore(keys.ready(queue, tenant), job_id) is not None
    assert redis.zscore(keys.active(queue), tenant) is not None
    assert redis.sismember(keys.DISPATCH_QUEUES, queue)
    assert redis.hget(keys.tenant_counts(tenant), "seq") is not None
    assert redis.hget(keys.job(job_id), "message") == "m|esc.0"
    assert redis.llen(waiting_lists(queue)[0]) == 0
