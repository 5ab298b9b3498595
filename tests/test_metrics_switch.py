"""``PULSE_METRICS=off``: neither the API nor a worker records (or serves) Prometheus metrics."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import free_port
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.telemetry import metrics
from tests.conftest import DIAG_TYPES
from tests.support import WorkerProcess, auth, scrape_api, settings_env, wait_for_state

SUBMITTED = "pulse_jobs_submitted_total"


def _submitted(text: str, tenant: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == SUBMITTED and sample.labels.get("tenant") == tenant
    )


@pytest.fixture
def switched_back() -> Iterator[None]:
    """The switch is per process: put it back on for the tests that run after."""
    yield
    metrics.set_enabled(True)


def test_the_api_records_nothing_with_metrics_off(settings: Settings, redis: Redis, switched_back: None) -> None:
    # given an API whose settings come from the environment with PULSE_METRICS=off
    off = Settings.from_env({**settings.to_env(), "PULSE_METRICS": "off", "PULSE_DEFAULT_QUEUE": "t-metrics-off"})
    assert off.metrics_enabled is False
    client = create_app(off).test_client()
    announce(redis, ["diag.echo"], 600)
    before = _submitted(scrape_api(client), "acme")
    # when a job is accepted
    response = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme"))
    assert response.status_code == 202
    # then no counter moved
    assert _submitted(scrape_api(client), "acme") == before
    redis.delete("t-metrics-off")


def test_a_worker_records_and_serves_nothing_with_metrics_off(
    settings: Settings, redis: Redis, tmp_path: Path, switched_back: None
) -> None:
    # given a worker started with PULSE_METRICS=off, a metrics port and a multiprocess folder
    queue = "t-metrics-off-worker"
    (tmp_path / "metrics").mkdir()
    env = {
        **settings_env(replace(settings, default_queue=queue)),
        "PULSE_METRICS": "off",
        "PULSE_WORKER_METRICS_PORT": str(port := free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log", queues=(queue,)).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES, timeout=60)
        # when it runs a job
        client = create_app(replace(settings, default_queue=queue)).test_client()
        job = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme")).get_json()
        assert wait_for_state(client, "acme", job["jobId"], {"succeeded"}, timeout=60)["state"] == "succeeded"
        # then it serves no metrics endpoint
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        # and none of its processes recorded a job
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path / "metrics"))
        recorded = [s for f in registry.collect() for s in f.samples if s.name.startswith("pulse_jobs_")]
        assert recorded == []
        assert "metrics on http" not in worker.log()
    finally:
        worker.stop()
