"""``pulse dev`` (what ``make run`` runs): the whole stack up, one job through it, clean stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pulse_cli.embedded_redis import free_port
from tests.support import TENANT_KEYS, child_env, wait_for


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except OSError:
        return 0, {}
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw or b"{}")
    except ValueError:
        return response.status, {}


def _text(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_pulse_dev_runs_a_job_and_stops_everything(tmp_path: Path, tenants_file: Path) -> None:
    # given no PULSE_REDIS_URL: pulse dev embeds its own Redis
    api_port, flower_port, metrics_port, receiver_port = free_port(), free_port(), free_port(), free_port()
    env = child_env({"PULSE_TENANTS_FILE": str(tenants_file)})
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse_cli.cli",
            "dev",
            "--api-port",
            str(api_port),
            "--flower-port",
            str(flower_port),
            "--concurrency",
            "1",
            "--worker-metrics-port",
            str(metrics_port),
            "--receiver-port",
            str(receiver_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # when it is ready
        wait_for(lambda: _request(api_port, "GET", "/readyz")[0] == 200, timeout=90, interval=0.5)
        # then a diag.echo job is accepted at once (the worker announced before the API
        # came up) and goes through the worker
        status, job = _request(api_port, "POST", "/v1/jobs", {"jobType": "diag.echo", "payload": {"via": "dev"}})
        assert status == 202, job
        done = wait_for(
            lambda: _request(api_port, "GET", f"/v1/jobs/{job['jobId']}")[1].get("state") == "succeeded",
            timeout=60,
        )
        assert done
        # and the API (summing its gunicorn workers) and the worker (summing its pool)
        # count the job
        label = '{job_type="diag.echo",tenant="acme"}'
        assert f"pulse_jobs_submitted_total{label} 1.0" in _text(api_port, "/metrics")
        succeeded = f"pulse_jobs_succeeded_total{label} 1.0"
        wait_for(lambda: succeeded in _text(metrics_port, "/metrics"), timeout=30)
        # and the README's HTTP handler demo works: register the demo receiver, submit,
        # and the signed delivery (checked by the receiver with standardwebhooks) succeeds
        hook = {"url": f"http://127.0.0.1:{receiver_port}/hook"}
        status, registered = _request(api_port, "PUT", "/v1/handlers/demo.hook", hook)
        assert status == 201 and registered["secret"].startswith("whsec_"), registered
        status, job = _request(api_port, "POST", "/v1/jobs", {"jobType": "demo.hook", "payload": {"hi": 1}})
        assert status == 202, job
        delivered = wait_for(
            lambda: (
                (doc := _request(api_port, "GET", f"/v1/jobs/{job['jobId']}")[1]).get("state") in ("succeeded", "dead")
                and doc
            ),
            timeout=60,
        )
        assert delivered["result"] == {"verified": True, "echo": {"hi": 1}, "attempt": 1}, delivered
        # and Flower answers, and Redis keeps its data under the working folder
        wait_for(lambda: _request(flower_port, "GET", "/healthcheck")[0] == 200, timeout=60)
        assert (tmp_path / ".pulse" / "redis").is_dir()
        banner = (tmp_path / "dev.log").read_text(errors="replace")
        assert f"http://127.0.0.1:{api_port}" in banner and "curl" in banner
        # and the API's and the worker's log lines about the job are JSON with its id
        about_job = [json.loads(line) for line in banner.splitlines() if job["jobId"] in line and line.startswith("{")]
        assert {r["logger"] for r in about_job} >= {"pulse.api", "pulse.worker"}
    finally:
        # when it gets SIGTERM
        dev.send_signal(signal.SIGTERM)
        code = dev.wait(60)
        log.close()
    # then it exits cleanly and leaves no process of its group behind
    assert code == 0, (tmp_path / "dev.log").read_text(errors="replace")[-3000:]
    wait_for(lambda: not _group_alive(dev.pid), timeout=30)
