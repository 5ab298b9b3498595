"""Adding a tenant with a queue of its own: edit the tenants file, no restart elsewhere."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_api import create_app
from pulse_api.services import EXTENSION_KEY
from pulse_core.settings import Settings
from tests.conftest import DIAG_TYPES
from tests.support import (
    WorkerProcess,
    auth,
    settings_env,
    wait_for,
    wait_for_state,
    write_tenants_file,
)

NEW_KEY = "newco-secret-key"


def post(client: FlaskClient, key: str) -> int:
    response = client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers={"Authorization": f"Bearer {key}"}
    )
    return response.status_code


def test_a_reload_adds_a_tenant_and_a_bad_reload_changes_nothing(
    settings: Settings,
    redis: Redis,
    worker: WorkerProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given an API reading a tenants file of its own, and the shared queue's worker running
    path = write_tenants_file(tmp_path / "tenants.toml")
    client = create_app(replace(settings, tenants_file=path)).test_client()
    shared_worker_pid = worker.process.pid if worker.process else None
    assert post(client, NEW_KEY) == 401
    # when the file gains tenant newco with a queue of its own (what an operator edits)
    write_tenants_file(path, keys={"newco": NEW_KEY}, tenant_settings={"newco": 'queue = "t-newco"'})
    # then within about a second the API accepts newco, routing it to its queue
    wait_for(lambda: post(client, NEW_KEY) == 202, timeout=10, interval=0.2)
    response = client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": {"n": 1}}, headers={"Authorization": f"Bearer {NEW_KEY}"}
    )
    job = response.get_json()
    assert job["queue"] == "t-newco"
    # and a worker started for that queue runs it
    newco = WorkerProcess(
        settings_env(replace(settings, tenants_file=path)),
        tmp_path / "newco.log",
        queues=["t-newco"],
        concurrency=1,
    ).start()
    try:
        newco.wait_ready(redis, DIAG_TYPES)
        doc = client.get(f"/v1/jobs/{job['jobId']}", headers={"Authorization": f"Bearer {NEW_KEY}"})
        assert doc.status_code == 200
        wait_for(
            lambda: (
                client.get(f"/v1/jobs/{job['jobId']}", headers={"Authorization": f"Bearer {NEW_KEY}"}).get_json()[
                    "state"
                ]
                == "succeeded"
            )
        )
    finally:
        newco.stop()
    # and the shared queue's worker was never restarted and still runs acme's jobs
    assert worker.process is not None and worker.process.pid == shared_worker_pid
    assert worker.process.poll() is None
    acme_job = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {}}, headers=auth("acme")).get_json()[
        "jobId"
    ]
    wait_for_state(client, "acme", acme_job, {"succeeded"})

    # when the file is then broken (what a bad edit looks like)
    services = client.application.extensions[EXTENSION_KEY]
    before = services.tenants.config
    with caplog.at_level(logging.ERROR, logger="pulse.config"):
        path.write_text(path.read_text() + "\n[tenants.broken\n")
        time.sleep(1.2)
        # then the API keeps the config in force, logs why, and goes on answering
        assert post(client, NEW_KEY) == 202
        assert post(client, TENANT_ACME_KEY) == 202
        assert services.tenants.config is before
        assert services.tenants.reload() is False  # a forced re-read: the same answer
    assert "not reloaded" in caplog.text and "not valid TOML" in caplog.text


TENANT_ACME_KEY = "acme-secret-key"
