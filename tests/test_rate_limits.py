"""Per-tenant rate limits and the backlog cap, counted in Redis across API processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from pulse_api import create_app
from pulse_core import keys
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
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


def submit(client: FlaskClient, tenant: str, body: dict | None = None):
    return client.post("/v1/jobs", json=body or BODY, headers=auth(tenant))


def test_limit_holds_exactly_across_eight_api_processes(settings: Settings, redis: Redis) -> None:
    # given tenant "racer" limited to 100/minute, and 8 API processes of their own
    announce(redis, ["diag.echo"], 600)
    queue = "t-race"
    env = settings_env(replace(settings, default_queue=queue))
    processes, per_process = 8, 50
    # when all 8 send 50 submissions each at once (400 in all, well within one window)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        futures = [
            pool.submit(post_from_new_process, env, "racer", [BODY] * per_process, ("pulse:test:race-start", processes))
            for _ in range(processes)
        ]
        answers = [answer for future in futures for answer in future.result(timeout=120)]
    # then exactly the limit is admitted: a moving window is exact
    statuses = [status for status, _, _ in answers]
    assert statuses.count(202) == 100, sorted(set(statuses))
    assert statuses.count(429) == 300
    # and every refusal says when to come back, as a rate-limited problem
    for status, headers, doc in answers:
        assert all(name in headers for name in RATE_HEADERS)
        if status == 429:
            assert doc["type"].endswith("/rate-limited")
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert headers["RateLimit-Remaining"] == "0"
    # and exactly the admitted jobs were recorded and queued
    assert redis.zcard(keys.tenant_jobs("racer")) == 100
    assert waiting_messages(redis, queue) == 100
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


def test_several_limits_are_all_or_nothing(client: FlaskClient, settings: Settings) -> None:
    # given "multi" allows 100/minute but only 3/hour
    answers = [submit(client, "multi") for _ in range(5)]
    # then the tighter limit decides, and the headers describe it
    assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert int(answers[3].headers["Retry-After"]) > 60
    # and a refusal consumed nothing in the looser window either (limits' own view)
    limiter = MovingWindowRateLimiter(RedisStorage(settings.redis_url, key_prefix=keys.RATE_LIMIT_PREFIX))
    minute = limiter.get_window_stats(parse("100/minute"), "multi")
    assert minute.remaining == 97


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
        assert int(redis.hget(keys.PENDING, "backlog") or 0) == 0
        assert submit(client, "backlog").status_code == 202
    finally:
        worker.stop()
