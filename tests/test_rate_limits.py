"""Per-tenant rate limits and the backlog cap, counted in Redis across API processes."""

from __future__ import annotations

import math
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from limits import parse
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.errors import RateLimited
from pulse_core.guards import rate_limits
from pulse_core.guards.admission import Admission, Submission
from pulse_core.jobs import Job, new_job_id, utc_now
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.tenants import Tenant
from tests.support import (
    WorkerProcess,
    auth,
    post_from_new_process,
    settings_env,
    wait_for_state,
    waiting_messages,
)

BODY = {"jobType": "diag.echo", "payload": {"n": 1}}
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
#: How far (seconds) two admission times read back from Redis may be off from the
#: script's own whole microseconds (a sorted-set score is a double).
CLOCK_GRAIN = 2e-6
#: The racing processes' jobs are watched an hour ahead, so no sweep moves them while
#: the test reads when each was let in.
WATCH_IN = 3600.0


def submit(client: FlaskClient, tenant: str, body: dict | None = None):
    return client.post("/v1/jobs", json=body or BODY, headers=auth(tenant))


def redis_now(redis: Redis) -> float:
    seconds, micros = redis.time()
    return seconds + micros / 1_000_000


def race(settings: Settings, tenant: str, queue: str, processes: int, per_process: int) -> list[Any]:
    """``processes`` API processes of their own send ``per_process`` submissions each, all at once."""
    env = settings_env(replace(settings, default_queue=queue, queued_check_seconds=WATCH_IN))
    spawn = multiprocessing.get_context("spawn")
    start_line = (f"pulse:test:race-start:{tenant}", processes)
    with ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        futures = [
            pool.submit(post_from_new_process, env, tenant, [BODY] * per_process, start_line) for _ in range(processes)
        ]
        return [answer for future in futures for answer in future.result(timeout=180)]


def admission_times(redis: Redis, answers: list[Any]) -> list[float]:
    """When (Redis' clock) each admitted job was let in: the admission script watches a
    queued job at its own ``now`` plus the watch delay."""
    ids = [doc["jobId"] for status, _, doc in answers if status == 202]
    return sorted(float(redis.zscore(keys.WATCH, job_id)) - WATCH_IN for job_id in ids)


def over_the_bound(times: list[float], limit: int, period: float) -> list[str]:
    """Every way ``times`` break GCRA's documented bound (``pulse_core.guards.rate_limits``):
    over any span of ``t`` seconds at most ``limit + floor(t / tau)``, ``tau = period / limit``,
    so at most ``2 * limit - 1`` in any window of ``period`` seconds."""
    tau, broken = period / limit, []
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - first
            if j - i + 1 > limit + math.floor((span + CLOCK_GRAIN) / tau):
                broken.append(f"{j - i + 1} let in over {span:.6f} s")
        in_window = sum(1 for t in times[i:] if t - first < period - CLOCK_GRAIN)
        if in_window > 2 * limit - 1:
            broken.append(f"{in_window} let in within {period} s of {first:.6f}")
    return broken


def test_limit_holds_its_bound_across_eight_api_processes(settings: Settings, redis: Redis) -> None:
    # given tenant "racer" limited to 100/minute (GCRA: a burst of 100, then one every 0.6 s),
    # and 8 API processes of their own
    announce(redis, ["diag.echo"], 600)
    queue = "t-race"
    # when all 8 send 50 submissions each at once (400 in all)
    answers = race(settings, "racer", queue, processes=8, per_process=50)
    # then the burst is let in, and never more than the bound allows
    statuses = [status for status, _, _ in answers]
    admitted = statuses.count(202)
    assert admitted >= 100, sorted(set(statuses))
    assert statuses.count(429) == 400 - admitted
    times = admission_times(redis, answers)
    assert over_the_bound(times, limit=100, period=60) == []
    # which is the limit exactly as long as the race lasts less than one tau
    if times[-1] - times[0] < 0.6:
        assert admitted == 100
    # and every refusal says when to come back, as a rate-limited problem
    for status, headers, doc in answers:
        assert all(name in headers for name in RATE_HEADERS)
        if status == 429:
            assert doc["type"].endswith("/rate-limited")
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert headers["RateLimit-Remaining"] == "0"
    # and exactly the admitted jobs were recorded and queued
    assert redis.zcard(keys.tenant_jobs("racer")) == admitted
    assert waiting_messages(redis, queue) == admitted
    redis.delete(queue)


def test_a_fast_limit_holds_its_bound_in_every_window_of_an_eight_process_race(
    settings: Settings, redis: Redis
) -> None:
    # given tenant "sprinter" limited to 10/second (a burst of 10, then one every 0.1 s),
    # and 8 API processes of their own
    announce(redis, ["diag.echo"], 600)
    queue = "t-sprint"
    # when all 8 send 60 submissions each at once, for several of its windows
    answers = race(settings, "sprinter", queue, processes=8, per_process=60)
    # then every refusal is the rate limit's, and what was let in keeps the bound in every
    # span and every 1-second window
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {202, 429}, sorted(set(statuses))
    times = admission_times(redis, answers)
    assert len(times) == statuses.count(202) >= 10
    assert over_the_bound(times, limit=10, period=1) == []
    # and over the whole race the rate was the limit's, give or take one burst
    assert len(times) <= 10 + math.floor((times[-1] - times[0] + CLOCK_GRAIN) / 0.1)
    assert waiting_messages(redis, queue) == len(times)
    redis.delete(queue)


def test_one_tenant_at_its_limit_never_slows_another(client: FlaskClient) -> None:
    # given tight-a has used its 5/minute
    remaining = [int(submit(client, "tight-a").headers["RateLimit-Remaining"]) for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    refused = submit(client, "tight-a")
    assert refused.status_code == 429
    # when tight-b (same limit) submits, then it is admitted with its full allowance
    admitted = submit(client, "tight-b")
    assert admitted.status_code == 202
    assert admitted.headers["RateLimit-Limit"] == "5"
    assert admitted.headers["RateLimit-Remaining"] == "4"
    # and tight-a is still refused
    assert submit(client, "tight-a").status_code == 429


def test_several_limits_are_all_or_nothing(client: FlaskClient, redis: Redis) -> None:
    # given "multi" allows 100/hour but only 3/day (GCRA: the looser one takes a slot back
    # every 36 s, so the test has that long to see what it counted)
    announce(redis, ["diag.echo"], 600)
    (hour,) = rate_limits.window_keys("multi", (parse("100/hour"),))
    start = redis_now(redis)
    answers = [submit(client, "multi") for _ in range(3)]
    after_three = int(redis.get(hour) or 0)
    # when it submits twice more
    answers += [submit(client, "multi") for _ in range(2)]
    # then the tighter limit decides, and the headers describe it
    assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert int(answers[3].headers["Retry-After"]) > 60
    # and the looser window counted the three let in (its arrival time moved 3 x 36 s on)
    assert after_three >= round((start + 3 * 36) * 1_000_000)
    # and a refusal consumed nothing in it
    assert int(redis.get(hour) or 0) == after_three


def test_rate_limit_headers_are_on_refusals_of_bad_input_too(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json={"jobType": "diag.echo"}, headers=auth("acme"))
    assert response.status_code == 422
    assert all(name in response.headers for name in RATE_HEADERS)


def test_backlog_cap_refuses_until_jobs_finish(
    isolated_settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # given tenant "backlog" may have 3 jobs not yet final, and no worker on its queue
    announce(redis, ["diag.echo"], 600)
    client = create_app(isolated_settings).test_client()
    queue = isolated_settings.default_queue
    first = [submit(client, "backlog") for _ in range(3)]
    assert [r.status_code for r in first] == [202, 202, 202]
    # when a fourth is sent, then it is refused with its own problem type
    refused = submit(client, "backlog")
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["type"].endswith("/backlog-full")
    assert refused.headers["Retry-After"]
    assert waiting_messages(redis, queue) == 3
    # when a worker drains the queue, then the tenant may submit again
    log = tmp_path_factory.mktemp("backlog") / "worker.log"
    worker = WorkerProcess(settings_env(isolated_settings), log, queues=[queue]).start()
    try:
        for response in first:
            job_id = response.get_json()["jobId"]
            wait_for_state(client, "backlog", job_id, {"succeeded"}, timeout=60)
        assert int(redis.hget(keys.tenant_counts("backlog"), "pending") or 0) == 0
        assert submit(client, "backlog").status_code == 202
    finally:
        worker.stop()


def command_calls(redis: Redis) -> Counter[str]:
    """Commands Redis ran so far, by name (``INFO commandstats``), scripts' own calls included."""
    stats = redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()})


def new_submission(tenant: Tenant) -> Submission:
    return Submission(
        job=Job(job_id=new_job_id(), tenant_id=tenant.tenant_id, job_type="diag.echo", queue="q", created_at=utc_now())
    )


def one_check(admission: Admission, tenant: Tenant, redis: Redis) -> tuple[str, Counter[str]]:
    """Admit one job for ``tenant``: whether it was let in, and the commands that cost Redis."""
    submission = new_submission(tenant)
    before = command_calls(redis)
    try:
        admission.admit(tenant, submission)
        outcome = "created"
    except RateLimited:
        outcome = "rate-limited"
    cost = command_calls(redis) - before
    cost["info"] = 0  # the measuring itself
    return outcome, +cost


def test_a_check_costs_the_same_commands_whatever_the_window_and_rate(own_redis: Redis) -> None:
    # given a 1/second limit and a 5000/hour one with 4,999 of its slots in use (the moving
    # window searched a list as long as that)
    admission = Admission(own_redis, idempotency_ttl_seconds=60)
    second = Tenant(tenant_id="per-second", api_key_sha256=(), rate_limit="1/second")
    hour = Tenant(tenant_id="per-hour", api_key_sha256=(), rate_limit="5000/hour")
    fill = [new_submission(hour) for _ in range(4999)]
    for at in range(0, len(fill), 500):
        assert not [v for v in admission.admit_many(hour, fill[at : at + 500]) if isinstance(v, RateLimited)]
    # (and the one-job script already loaded, by a tenant of its own: loading it costs commands too)
    warm = Tenant(tenant_id="warm-up", api_key_sha256=(), rate_limit="1/second")
    admission.admit(warm, new_submission(warm))
    # when each lets one in and refuses the next (1/second: until a refusal comes within the second)
    costs: dict[str, dict[str, Counter[str]]] = {}
    for tenant in (hour, second):
        seen = costs.setdefault(tenant.rate_limit, {})
        for _ in range(100):
            outcome, cost = one_check(admission, tenant, own_redis)
            seen.setdefault(outcome, cost)
            if len(seen) == 2:
                break
    # then both cost the same commands, one for one, let in or refused
    assert costs["1/second"] == costs["5000/hour"], costs
    # and the limit's share is one MGET, and one SET when a job is let in
    created, refused = costs["1/second"]["created"], costs["1/second"]["rate-limited"]
    assert created["mget"] == 1 and created["set"] == 1
    assert refused["mget"] == 1 and "set" not in refused
