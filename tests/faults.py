"""Shared by the Redis fault tests: a private Redis of a test module's own, and the invariants
every fault test checks afterwards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from redis import Redis

from pulse_core import keys
from pulse_core.jobs import FINAL_STATES
from pulse_core.settings import Settings
from tests.invariants import backlog_mismatches, unowned_keys
from tests.support import auth, wait_for, witness_starts

FINAL = {state.value for state in FINAL_STATES}


def private_settings(redis_url: str, tenants_file: Path, **overrides: Any) -> Settings:
    """Settings for a private Redis: short leases and sweeps, as the session's settings."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "broker_url": redis_url,
        "tenants_file": tenants_file,
        "handler_modules": ("pulse_worker.diagnostics", "witness_handlers"),
        "lease_seconds": 2.0,
        "sweep_interval_seconds": 0.5,
        "unknown_job_type_grace_seconds": 3.0,
        **overrides,
    }
    return Settings(**values)


def submit(client: FlaskClient, job_type: str, payload: dict[str, Any], tenant: str = "acme") -> str:
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload}, headers=auth(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["jobId"])


def assert_invariants(redis: Redis, client: FlaskClient, accepted: Iterable[str], *, timeout: float = 60.0) -> None:
    """After a fault: every job answered 2xx reaches a final state; no attempt's handler
    started twice (the witness handlers' record); each tenant's backlog count ``pending``
    equals its records that are not final; no ``pulse:`` key is left without an owner or
    an expiry (tests/invariants.py)."""
    for job_id in accepted:

        def final(job_id: str = job_id) -> bool:
            return redis.hget(keys.job(job_id), "state") in FINAL

        wait_for(final, timeout=timeout, interval=0.2)
        starts = Counter(entry["attempt"] for entry in witness_starts(redis, job_id))
        assert all(n == 1 for n in starts.values()), (job_id, witness_starts(redis, job_id))
    assert backlog_mismatches(redis) == {}
    assert unowned_keys(redis) == []
