"""Fairness: tenant B's submit->start latency while tenant A's 5,000-job flood drains.

One Pulse worker (2 processes) on a shared queue. B submits a job every 20 ms,
first with nothing else queued (idle), then right after A has queued 5,000 jobs
(flood), at the default priority and at priority 9. Latency is from just before B's
submit to its handler's start (``bench.stamp``, to the microsecond: the record's
``startedAt`` and ``createdAt`` are to the millisecond, too coarse for a few ms).
Pulse's fair dispatcher (``pulse_core.store.dispatch``) is what keeps B's figures near
its idle ones whatever A's priority: without it B's jobs would wait behind all of A's.
"""

from __future__ import annotations

import statistics
import time

from flask.testing import FlaskClient

from bench.common import BenchEnv, Result, celery_worker, spawn, stop, write_tenants_file
from bench.drain import _wait_worker
from pulse_api import create_app
from pulse_core.broker.celery_app import create_celery
from pulse_core.settings import Settings

QUEUE = "bench-fair"
FLOOD = 5000
BATCH = 500
B_JOBS = 200
B_INTERVAL = 0.02
KEYS = {"flood": "bench-flood-key", "steady": "bench-steady-key"}


def _headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _submit_b(client: FlaskClient) -> dict[str, float]:
    """B's jobs: job id -> when its submit began (epoch seconds)."""
    sent = {}
    for _ in range(B_JOBS):
        began = time.time()
        answer = client.post("/v1/jobs", json={"jobType": "bench.stamp", "payload": {}}, headers=_headers("steady"))
        sent[answer.get_json()["jobId"]] = began
        time.sleep(B_INTERVAL)
    return sent


def _flood(client: FlaskClient, priority: int = 5) -> list[str]:
    ids: list[str] = []
    for _ in range(FLOOD // BATCH):
        jobs = [{"jobType": "diag.echo", "payload": {}, "options": {"priority": priority}}] * BATCH
        answer = client.post("/v1/batches", json={"jobs": jobs}, headers=_headers("flood"))
        ids += [item["job"]["jobId"] for item in answer.get_json()["items"]]
    return ids


def _wait_done(client: FlaskClient, tenant: str, ids: list[str], timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    docs = []
    for job_id in ids:
        while True:
            doc = client.get(f"/v1/jobs/{job_id}", headers=_headers(tenant)).get_json()
            if doc["state"] == "succeeded":
                docs.append(doc)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish: {doc['state']}")
            time.sleep(0.02)
    return docs


def _latencies(client: FlaskClient, sent: dict[str, float]) -> list[float]:
    """Each B job's submit -> handler start, in ms."""
    docs = _wait_done(client, "steady", list(sent))
    return [(doc["result"]["startedAt"] - sent[doc["jobId"]]) * 1000 for doc in docs]


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


def run(env: BenchEnv) -> list[Result]:
    tenants = write_tenants_file(env.work_dir / "fair-tenants.toml", KEYS)
    settings = Settings(redis_url=env.redis_url, broker_url=env.redis_url, tenants_file=tenants, default_queue=QUEUE)
    client = create_app(settings).test_client()
    results = {
        name: Result("fairness", name, unit="ms")
        for name in (
            "B p50 idle",
            "B p99 idle",
            "B p50 under A's flood",
            "B p99 under A's flood",
            "B p50 under A's priority-9 flood",
            "B p99 under A's priority-9 flood",
        )
    }
    worker_env = env.env(
        PULSE_TENANTS_FILE=str(tenants),
        PULSE_DEFAULT_QUEUE=QUEUE,
        PULSE_HANDLER_MODULES="pulse_worker.diagnostics,bench.handlers",
    )
    worker = spawn(
        celery_worker("pulse_worker.app", QUEUE, 2, "-n", "fair@bench"), worker_env, env.work_dir / "fair-worker.log"
    )
    try:
        _wait_worker(create_celery(settings), "fair@bench")
        # Warm up: the worker runs both tenants' jobs.
        for tenant in KEYS:
            answer = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=_headers(tenant))
            _wait_done(client, tenant, [answer.get_json()["jobId"]], timeout=60)
        for _ in range(env.rounds):
            idle = _latencies(client, _submit_b(client))
            measured = [("idle", idle)]
            # A floods at the default priority, then at priority 9 (priority orders A's own jobs only).
            for label, priority in (("under A's flood", 5), ("under A's priority-9 flood", 9)):
                flood_ids = _flood(client, priority)
                under = _latencies(client, _submit_b(client))
                left = sum(
                    client.get(f"/v1/jobs/{j}", headers=_headers("flood")).get_json()["state"] == "queued"
                    for j in flood_ids[-1000:]
                )
                print(f"   B done with {left} of A's last 1000 jobs still queued ({label})", flush=True)
                _wait_done(client, "flood", flood_ids)
                measured.append((label, under))
            for label, values in measured:
                p50, p99 = _percentiles(values)
                results[f"B p50 {label}"].values.append(p50)
                results[f"B p99 {label}"].values.append(p99)
    finally:
        stop(worker)
    return list(results.values())
