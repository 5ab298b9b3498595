"""Prometheus metrics: counters move by exactly what happened, per tenant and jobType.

The API's metrics are read from its registry in process (and from ``pulse api``'s own
metrics port in one test); the worker's from its own HTTP endpoint, which sums its
prefork children (multiprocess mode).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pulse_api import create_app
from pulse_api.observability import metrics_registry
from pulse_cli.embedded_redis import EmbeddedRedis, free_port
from pulse_core.broker.celery_app import create_celery, publish_jobs, waiting_lists
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from pulse_core.store.dispatch import Dispatcher
from pulse_core.store.job_store import JobStore
from pulse_core.store.job_types import announce
from tests.conftest import OBSERVED_QUEUE
from tests.support import (
    ApiProcess,
    WorkerProcess,
    auth,
    job_state,
    settings_env,
    wait_for,
    wait_for_state,
    waiting_messages,
    write_tenants_file,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def worker_metrics(worker: WorkerProcess) -> Samples:
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


def api_metrics(client: FlaskClient) -> Samples:
    """What the API's metrics endpoint (a port of its own under ``pulse api``) exposes."""
    return parse(generate_latest(metrics_registry(client.application)).decode())


def test_counters_move_by_exactly_the_jobs_submitted_succeeded_and_dead(
    observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    client = create_app(observed_settings).test_client()
    echo = {"tenant": "globex", "job_type": "diag.echo"}
    fail = {"tenant": "globex", "job_type": "diag.fail"}
    api_before, worker_before = api_metrics(client), worker_metrics(observed_worker)
    # when globex submits 3 jobs that succeed and 2 that fail twice (one retry each), and
    # makes 2 refused attempts
    job_ids = []
    for job_type, count in (("diag.echo", 3), ("diag.fail", 2)):
        for n in range(count):
            body = {"jobType": job_type, "payload": {"n": n}}
            if job_type == "diag.fail":
                body["options"] = {"maxRetries": 1}
            response = client.post("/v1/jobs", json=body, headers=auth("globex"))
            assert response.status_code == 202
            job_ids.append(response.get_json()["jobId"])
    refused = client.post("/v1/jobs", json={"jobType": "no.such.type", "payload": {}}, headers=auth("globex"))
    assert refused.status_code == 422
    anonymous = client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers={"Authorization": "Bearer wrong"}
    )
    assert anonymous.status_code == 401
    for job_id in job_ids:
        wait_for_state(client, "globex", job_id, {"succeeded", "dead"}, timeout=60)

    # then the API counted 3 + 2 submissions and the 2 refusals by reason; a jobType
    # that is not live and a tenant that is not known are labelled "unknown"
    api = api_metrics(client)

    def api_delta(name: str, **labels: str) -> float:
        return value(api, name, **labels) - value(api_before, name, **labels)

    assert api_delta("pulse_jobs_submitted_total", **echo) == 3
    assert api_delta("pulse_jobs_submitted_total", **fail) == 2
    assert api_delta("pulse_jobs_rejected_total", tenant="globex", job_type="unknown", reason="validation") == 1
    assert api_delta("pulse_jobs_rejected_total", tenant="unknown", job_type="unknown", reason="unauthenticated") == 1
    assert not any("no.such.type" in str(key) for key in api)
    # and it reports the depth of its queue, read at scrape time
    assert ("pulse_queue_depth", frozenset({("queue", OBSERVED_QUEUE)})) in api

    # and the worker, summing its pool processes, counted 3 + 4 starts, 3 successes,
    # 2 retries and 2 dead
    def worker_delta(name: str, **labels: str) -> float:
        return value(worker_now, name, **labels) - value(worker_before, name, **labels)

    def all_counted() -> bool:
        nonlocal worker_now
        worker_now = worker_metrics(observed_worker)
        return worker_delta("pulse_jobs_dead_total", **fail) >= 2 and (
            worker_delta("pulse_jobs_succeeded_total", **echo) >= 3
        )

    worker_now: Samples = {}
    wait_for(all_counted, timeout=30)
    assert worker_delta("pulse_jobs_started_total", **echo) == 3
    assert worker_delta("pulse_jobs_started_total", **fail) == 4
    assert worker_delta("pulse_jobs_retried_total", **fail) == 2
    assert worker_delta("pulse_jobs_retried_total", **echo) == 0
    assert worker_delta("pulse_jobs_succeeded_total", **echo) == 3
    assert worker_delta("pulse_jobs_succeeded_total", **fail) == 0
    assert worker_delta("pulse_jobs_dead_total", **fail) == 2
    assert worker_delta("pulse_jobs_dead_total", **echo) == 0
    # and the queue wait histogram saw each job's first attempt, the run time every attempt
    for labels, jobs, attempts in ((echo, 3, 3), (fail, 2, 4)):
        assert worker_delta("pulse_job_queue_wait_seconds_count", **labels) == jobs
        assert worker_delta("pulse_job_run_seconds_count", **labels) == attempts
        assert worker_delta("pulse_job_run_seconds_sum", **labels) >= 0


def test_queue_depth_reads_the_jobs_waiting_on_the_broker_and_in_the_ready_sets(
    settings: Settings, redis: Redis
) -> None:
    # given a queue no worker consumes, and jobs of two tenants queued on it (the first on
    # the broker, the rest in their tenants' ready sets)
    queue = "t-depth-unconsumed"
    announce(redis, ["diag.echo"], 60)
    client = create_app(replace(settings, default_queue=queue, dispatch_depth=2)).test_client()
    before = value(api_metrics(client), "pulse_queue_depth", queue=queue)
    for tenant, count in (("acme", 5), ("globex", 3)):
        for n in range(count):
            response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {"n": n}}, headers=auth(tenant))
            assert response.status_code == 202
    # when /metrics is scraped, then the depth is the 8 jobs waiting
    scraped = api_metrics(client)
    assert value(scraped, "pulse_queue_depth", queue=queue) - before == 8
    # and each tenant's jobs waiting in its ready set are shown (2 of acme's went on the broker)
    assert value(scraped, "pulse_tenant_waiting", queue=queue, tenant="acme") == 3
    assert value(scraped, "pulse_tenant_waiting", queue=queue, tenant="globex") == 3


def test_queue_depth_reads_the_broker_when_it_is_another_redis_than_the_job_store(
    settings: Settings, tmp_path: Path
) -> None:
    # given a job store and a broker on two Redis servers of their own, and an API using both
    job_store = EmbeddedRedis(tmp_path / "store", persist=False).start()
    broker = EmbeddedRedis(tmp_path / "broker", persist=False).start()
    try:
        queue = "t-depth-broker"
        tenants = write_tenants_file(tmp_path / "tenants.toml")
        api_settings = replace(
            settings, redis_url=job_store.url, broker_url=broker.url, default_queue=queue, tenants_file=tenants
        )
        store, broker_redis = connect(job_store.url), connect(broker.url)
        announce(store, ["diag.echo"], 60)
        client = create_app(api_settings).test_client()
        # when acme submits 5 jobs (two of them urgent) and globex 3, with no worker to take them
        for tenant, count in (("acme", 5), ("globex", 3)):
            for n in range(count):
                body = {"jobType": "diag.echo", "payload": {"n": n}, "options": {"priority": 9 if n < 2 else 5}}
                assert client.post("/v1/jobs", json=body, headers=auth(tenant)).status_code == 202
        # then they wait in the job store's ready sets for the workers' dispatcher (a broker
        # that is not the job store's cannot be pushed onto by a script), and the depth counts all 8
        assert waiting_messages(broker_redis, queue) == 0 and waiting_messages(store, queue) == 8
        assert value(api_metrics(client), "pulse_queue_depth", queue=queue) == 8
        # when a worker's dispatcher publishes four of them onto the broker
        app = create_celery(api_settings)
        ids = Dispatcher(store, depth=4, broker_lists=None).take(queue, 4)
        jobs = [job for job in JobStore(store).get_listed(ids) if job is not None]
        assert publish_jobs(app, [(job, None) for job in jobs], (Exception,))[0] == 4
        assert value(api_metrics(client), "pulse_queue_depth", queue=queue) == 8
        # and a worker takes three off the broker's list
        taken = 0
        for name in waiting_lists(queue):
            while taken < 3 and broker_redis.rpop(name) is not None:
                taken += 1
        # then the depth follows the broker and the ready sets: 5 wait
        assert taken == 3
        assert value(api_metrics(client), "pulse_queue_depth", queue=queue) == 5
    finally:
        broker.stop()
        job_store.stop()


def test_queue_wait_leaves_out_a_deliberate_delay_and_the_time_dead(
    observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    client = create_app(observed_settings).test_client()
    delayed = {"tenant": "acme", "job_type": "diag.sleep"}
    dead = {"tenant": "acme", "job_type": "diag.fail"}
    before = worker_metrics(observed_worker)
    # given a job asked to start 4 s from now, and a job that dies, sits dead 4 s and is replayed
    late = client.post(
        "/v1/jobs",
        json={"jobType": "diag.sleep", "payload": {"seconds": 0}, "options": {"delaySeconds": 4}},
        headers=auth("acme"),
    ).get_json()["jobId"]
    failing = client.post(
        "/v1/jobs", json={"jobType": "diag.fail", "payload": {}, "options": {"maxRetries": 0}}, headers=auth("acme")
    ).get_json()["jobId"]
    wait_for_state(client, "acme", failing, {"dead"}, timeout=60)
    time.sleep(4)
    assert client.post(f"/v1/dead-letters/{failing}/replay", headers=auth("acme")).status_code == 202
    wait_for_state(client, "acme", late, {"succeeded"}, timeout=60)
    wait_for(
        lambda: (
            job_state(client, "acme", failing)["replays"] == 1 and job_state(client, "acme", failing)["state"] == "dead"
        ),
        timeout=60,
    )

    # then each first attempt's queue wait counts from when it was due, not the 4 s before
    def waited(labels: dict[str, str]) -> tuple[float, float]:
        now = worker_metrics(observed_worker)
        name = "pulse_job_queue_wait_seconds"
        return (
            value(now, f"{name}_count", **labels) - value(before, f"{name}_count", **labels),
            value(now, f"{name}_sum", **labels) - value(before, f"{name}_sum", **labels),
        )

    wait_for(lambda: waited(delayed)[0] == 1 and waited(dead)[0] == 2, timeout=30)
    assert waited(delayed)[1] < 3.0, waited(delayed)
    assert waited(dead)[1] < 3.0, waited(dead)  # both cycles together


def test_metrics_are_not_on_the_public_port(settings: Settings, client: FlaskClient, tmp_path: Path) -> None:
    # given the API as `pulse api` runs it, with its metrics port
    metrics_port = free_port()
    api = ApiProcess(
        settings_env(settings), tmp_path / "api.log", extra_args=("--metrics-port", str(metrics_port))
    ).start()
    try:
        # when a tenant's key asks the public port for /metrics, then there is no such thing
        status, body = _http(f"{api.url}/metrics", auth("acme"))
        assert status == 404 and "pulse_" not in body
        assert "/metrics" not in client.get("/openapi.json").get_json()["paths"]
        refused = client.get("/metrics", headers=auth("acme"))
        assert refused.status_code == 404 and refused.mimetype == "application/problem+json"
        # and the metrics port (loopback by default) serves every API process's numbers
        status, body = _http(f"http://127.0.0.1:{metrics_port}/metrics", {})
        assert status == 200
        assert "pulse_queue_depth" in body
    finally:
        api.stop()


def _http(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_batch_counts_each_created_job_once_per_jobtype_and_no_replay_or_refusal(
    client: FlaskClient, redis: Redis
) -> None:
    # given globex and two live jobTypes
    announce(redis, ["diag.echo", "diag.fail"], 60)
    echo = {"tenant": "globex", "job_type": "diag.echo"}
    fail = {"tenant": "globex", "job_type": "diag.fail"}
    before = api_metrics(client)
    key = f"batch-metrics-{time.time_ns()}"
    jobs = [
        {"jobType": "diag.echo", "payload": {"n": 1}, "idempotencyKey": key},
        {"jobType": "diag.echo", "payload": {"n": 1}, "idempotencyKey": key},  # replays the first
        {"jobType": "diag.echo", "payload": {"n": 2}},
        {"jobType": "diag.fail", "payload": {}},
        {"jobType": "no.such.type", "payload": {}},
        {"jobType": "diag.echo"},  # no payload: refused by the schema
    ]
    # when globex submits them as one batch
    response = client.post("/v1/batches", json={"jobs": jobs}, headers=auth("globex"))
    assert response.status_code == 200
    assert [item["status"] for item in response.get_json()["items"]] == [202, 200, 202, 202, 422, 422]
    # then the API counted the 2 created echo jobs and the 1 fail job, the replay not at all
    after = api_metrics(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pulse_jobs_submitted_total", **echo) == 2
    assert delta("pulse_jobs_submitted_total", **fail) == 1
    assert not any("no.such.type" in str(key) for key in after)
