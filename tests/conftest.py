"""Fixtures: a private Redis server, a real Celery worker subprocess, the API app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis, free_port
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from tests.support import WorkerProcess, settings_env, write_tenants_file

DIAG_TYPES = ("diag.echo", "diag.sleep", "diag.flaky", "diag.fail")
WITNESS_TYPES = ("witness.sleep", "witness.flaky", "witness.crash", "witness.cooperative")
OBSERVED_QUEUE = "observed"

#: ``private_redis``, ``direct``, ``store`` and ``proxy`` of the modules that break the API's link to Redis.
pytest_plugins = ["tests.fault_fixtures"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server of our own on a free port; never one somebody left running. It runs as
    Pulse requires (noeviction, AOF), so no start-up check refuses or warns."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    """A Redis server of this test's own, not persisted: no session worker sweeps it and
    nothing else talks to it, so its command counts are the test's alone."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        yield connect(server.url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tenants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tenants_file(tmp_path_factory.mktemp("config") / "tenants.toml")


@pytest.fixture(scope="session")
def settings(redis_server: EmbeddedRedis, tenants_file: Path) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        broker_url=redis_server.url,
        tenants_file=tenants_file,
        handler_modules=("pulse_worker.diagnostics", "witness_handlers"),
        # Short leases and frequent sweeps, so that recovery is seconds away in tests.
        lease_seconds=2.0,
        sweep_interval_seconds=0.5,
        # A job whose jobType no live worker announces dies after 2 s, not 5 minutes.
        unknown_job_type_grace_seconds=2.0,
    )


@pytest.fixture(scope="session")
def redis(settings: Settings) -> Redis:
    return connect(settings.redis_url)


@pytest.fixture(scope="session")
def worker(settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One real prefork worker on the shared queue, with the diagnostic handlers."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = WorkerProcess(settings_env(settings), log).start()
    process.wait_ready(redis, DIAG_TYPES + WITNESS_TYPES)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def observed_worker(
    settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker as `pulse worker` runs it: JSON logs only, task events, a metrics endpoint
    summing its prefork children (multiprocess dir). It consumes the ``observed`` queue."""
    folder = tmp_path_factory.mktemp("observed")
    (folder / "metrics").mkdir()
    env = settings_env(settings)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    env["PULSE_WORKER_METRICS_PORT"] = str(free_port())
    process = WorkerProcess(
        env, folder / "worker.log", queues=(OBSERVED_QUEUE,), extra_args=("--task-events",), quiet=True
    ).start()
    process.metrics_port = int(env["PULSE_WORKER_METRICS_PORT"])
    process.wait_ready(redis, DIAG_TYPES)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def observed_settings(settings: Settings) -> Settings:
    """Settings whose jobs go to the ``observed_worker``."""
    return replace(settings, default_queue=OBSERVED_QUEUE)


@pytest.fixture(scope="session")
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def live_client(client: FlaskClient, worker: WorkerProcess) -> FlaskClient:
    """A test client whose jobs a real worker runs."""
    return client


@pytest.fixture
def isolated_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Settings with a queue of this test's own, so its worker sees no one else's jobs."""
    queue = "t-" + request.node.name.replace("[", "-").replace("]", "")[:60]
    return replace(settings, default_queue=queue)
