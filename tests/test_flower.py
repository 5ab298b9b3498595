"""Flower, started by ``pulse flower`` against the test Redis, shows jobs by jobType, no payload."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from pulse_api import create_app
from pulse_cli.embedded_redis import free_port
from pulse_core.settings import Settings
from tests.support import WorkerProcess, auth, child_env, settings_env, wait_for, wait_for_state

SECRET = "flower-must-not-see-this-4410"
CREDENTIALS = "ops:flower-pass"


def _get(port: int, path: str, credentials: str | None = CREDENTIALS) -> tuple[int, bytes]:
    headers = {}
    if credentials:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[int]:
    """``pulse flower`` with basic auth from PULSE_FLOWER_BASIC_AUTH, on a free port."""
    port = free_port()
    env = child_env({**settings_env(settings), "PULSE_FLOWER_BASIC_AUTH": CREDENTIALS})
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse_cli.cli", "flower", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _get(port, "/healthcheck")[0] == 200, timeout=60, interval=0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _finished_task(port: int, client: FlaskClient) -> dict[str, Any]:
    """Submit diag.echo jobs until Flower (which sees only events after it subscribed) shows one."""
    for _ in range(5):
        body = {"jobType": "diag.echo", "payload": {"secret": SECRET}}
        job_id = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"]
        wait_for_state(client, "acme", job_id, {"succeeded"}, timeout=60)

        def shown(job_id: str = job_id) -> dict[str, Any] | None:
            status, raw = _get(port, "/api/tasks")
            tasks = json.loads(raw) if status == 200 else {}
            for task in tasks.values():
                if job_id in str(task.get("args")) and task.get("state") == "SUCCESS":
                    return dict(task)
            return None

        try:
            return wait_for(shown, timeout=5, interval=0.2)
        except AssertionError:
            continue
    raise AssertionError("Flower never showed a finished job")


def test_flower_shows_a_finished_job_under_its_job_type_without_payload(
    flower: int, observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    # given Flower with basic auth and a worker sending task events
    client = create_app(observed_settings).test_client()
    # when a job with a recognisable payload runs
    task = _finished_task(flower, client)
    # then Flower lists it under its jobType, and its args are the job id alone
    assert task["name"] == "diag.echo"
    assert SECRET not in json.dumps(task)
    # and Flower's own metrics answer, counting events by jobType
    status, raw = _get(flower, "/metrics")
    assert status == 200
    assert 'flower_events_total{task="diag.echo"' in raw.decode()
    # and without credentials its API refuses
    assert _get(flower, "/api/tasks", credentials=None)[0] == 401


def test_flower_shows_a_dead_job_as_failed_and_its_retry_as_retried(
    flower: int, observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    # given Flower and a worker started as `pulse worker` starts it (task events on)
    client = create_app(observed_settings).test_client()

    def failed_task() -> tuple[str, dict[str, Any]]:
        for _ in range(5):  # Flower sees only events sent after it subscribed
            # when a job fails its first attempt, is retried, fails again and is dead
            body = {"jobType": "diag.fail", "payload": {"secret": SECRET}, "options": {"maxRetries": 1}}
            job_id = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()["jobId"]
            wait_for_state(client, "acme", job_id, {"dead"}, timeout=60)

            def shown(job_id: str = job_id) -> dict[str, Any] | None:
                status, raw = _get(flower, "/api/tasks")
                tasks = json.loads(raw) if status == 200 else {}
                for task in tasks.values():
                    if job_id in str(task.get("args")) and task.get("state") == "FAILURE":
                        return dict(task)
                return None

            try:
                return job_id, wait_for(shown, timeout=5, interval=0.2)
            except AssertionError:
                continue
        raise AssertionError("Flower never showed a failed job")

    job_id, task = failed_task()
    # then Flower lists it as failed, under its jobType, without its payload
    assert task["name"] == "diag.fail"
    assert "JobDead" in str(task.get("exception"))
    assert SECRET not in json.dumps(task)
    # and counted its retry as a retry
    status, raw = _get(flower, "/metrics")
    assert status == 200
    assert 'flower_events_total{task="diag.fail",type="task-retried"' in raw.decode()
    # and the job record says what it said before: dead after 2 attempts, with its last error
    doc = wait_for_state(client, "acme", job_id, {"dead"})
    assert doc["attempts"] == 2 and doc["replays"] == 0
    assert doc["error"]["type"] != "JobDead"
    # and the failed message was acked, not redelivered: nothing runs it again
    time.sleep(3)
    assert wait_for_state(client, "acme", job_id, {"dead"})["attempts"] == 2


def test_flower_broker_tab_reads_the_redis_broker(flower: int, settings: Settings) -> None:
    # when the Broker tab is opened (no worker announces itself to Flower here: it shows the
    # shared queue), then it lists the queue (it said "'redis' broker is not supported")
    status, raw = _get(flower, "/broker")
    assert status == 200, raw[:300]
    assert b"not supported" not in raw
    assert f"<td>{settings.default_queue}</td>".encode() in raw
