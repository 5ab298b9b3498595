"""A batch is admitted in a few script runs, not one per job (``admit_batch``, 100 jobs a run).

Counted on a Redis of the test's own, so no other client's scripts are in the count.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.guards.admission import BATCH_CHUNK
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from tests.invariants import backlog_mismatches, stored_bytes_mismatches
from tests.support import auth


def _calls(redis: Redis, command: str) -> int:
    """How many times Redis ran ``command`` since it started (``INFO commandstats``)."""
    found = redis.info("commandstats").get(f"cmdstat_{command}")
    return int(found["calls"]) if found else 0


def test_a_500_job_batch_is_five_script_runs_each_job_answered_on_its_own(settings: Settings, tmp_path: Path) -> None:
    # given an API on a Redis of its own (job store and broker), its jobType announced
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        api_settings = replace(settings, redis_url=server.url, broker_url=server.url, default_queue="t-batch-calls")
        redis = connect(server.url)
        announce(redis, ["diag.echo"], 600)
        client = create_app(api_settings).test_client()
        client.post("/v1/batches", json={"jobs": [{"jobType": "diag.echo", "payload": {}}]}, headers=auth("acme"))
        before = {name: _calls(redis, name) for name in ("evalsha", "eval", "fcall", "script|exists", "script|load")}
        # when a batch of 500 is submitted: every 50th job reuses the previous job's key with another
        # body (a conflict), the others are new
        jobs = [
            {
                "jobType": "diag.echo",
                "payload": {"n": n},
                "metadata": {"n": str(n)},
                "idempotencyKey": f"calls-{n - 1 if n % 50 == 49 else n}",
            }
            for n in range(500)
        ]
        response = client.post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
        # then Redis ran the admission script once per 100 jobs, and no other script: one
        # pipelined round trip, with no SCRIPT EXISTS before it
        after = {name: _calls(redis, name) for name in before}
        assert after["evalsha"] - before["evalsha"] == 500 // BATCH_CHUNK == 5
        assert all(after[name] == before[name] for name in ("eval", "fcall", "script|exists", "script|load"))
        # and each job was answered on its own, in request order
        items = response.get_json()["items"]
        assert [item["status"] for item in items] == [422 if n % 50 == 49 else 202 for n in range(500)]
        assert all(items[n]["problem"]["type"] == "/problems/idempotency-key-reused" for n in range(49, 500, 50))
        assert [item["job"]["metadata"]["n"] for item in items if item["status"] == 202] == [
            str(n) for n in range(500) if n % 50 != 49
        ]
        # and the counters are exact: 1 + 490 jobs pending, their bytes held
        assert JobStore(redis).pending("acme") == 491
        assert backlog_mismatches(redis) == {}
        assert stored_bytes_mismatches(redis, ["acme"]) == {}
        # and when Redis forgot its scripts (a restart, SCRIPT FLUSH), a batch still runs each chunk once
        redis.script_flush()
        again = client.post("/v1/batches", json={"jobs": jobs[:150]}, headers=auth("acme"))
        assert [item["status"] for item in again.get_json()["items"]] == [
            422 if n % 50 == 49 else 200 for n in range(150)
        ]
        assert JobStore(redis).pending("acme") == 491
    finally:
        server.stop()
