"""``pulse dev`` (what ``make run`` runs): the whole stack up, one job through it, clean stop."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pulse_cli.embedded_redis import free_port
from pulse_core.settings import Settings
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


def _dev_env(path: Path) -> dict[str, str]:
    """``NAME=value`` lines as a shell would read them (``set -a; . .pulse/env``)."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = shlex.split(value)[0] if value else ""
    return found


def _dev(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pulse_cli.cli", "dev", *args]
    return subprocess.run(command, cwd=tmp_path, env=child_env(env), capture_output=True, text=True, timeout=120)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_pulse_dev_outside_the_repository_says_so_and_starts_nothing(tmp_path: Path) -> None:
    # given a folder with no deploy/tenants.dev.toml, and no PULSE_TENANTS_FILE
    redis_port = free_port()
    # when pulse dev starts there
    run = _dev(tmp_path, {}, "--redis-port", str(redis_port))
    # then it exits with one line naming the file, and no Redis is left listening
    assert run.returncode != 0
    assert "deploy/tenants.dev.toml" in run.stderr and "repository root" in run.stderr
    assert "Traceback" not in run.stderr
    assert not _listening(redis_port)


def test_pulse_dev_names_a_busy_port_in_one_line(tmp_path: Path, tenants_file: Path) -> None:
    # given the API's port already taken
    redis_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # when pulse dev starts
        run = _dev(
            tmp_path,
            {"PULSE_TENANTS_FILE": str(tenants_file)},
            "--api-port",
            str(busy),
            "--redis-port",
            str(redis_port),
        )
    # then one line names the port and the option, and nothing was started
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(busy) in lines[0] and "--api-port" in lines[0], run.stderr
    assert not _listening(redis_port)


@pytest.mark.timeout(180)
def test_pulse_dev_leaves_no_redis_behind_when_the_stack_fails_to_start(tmp_path: Path, tenants_file: Path) -> None:
    # given a handler module that does not exist: the worker fails after Redis started
    redis_port = free_port()
    env = {"PULSE_TENANTS_FILE": str(tenants_file), "PULSE_HANDLER_MODULES": "no_such_handlers_module"}
    # when pulse dev starts
    run = _dev(tmp_path, env, "--redis-port", str(redis_port), *_free_ports())
    # then it exits non-zero, and its embedded Redis is stopped
    assert run.returncode != 0, run.stderr[-2000:]
    assert "worker exited" in run.stderr
    assert not _listening(redis_port)


def _free_ports() -> list[str]:
    names = ("--api-port", "--flower-port", "--worker-metrics-port", "--api-metrics-port")
    return [value for name in names for value in (name, str(free_port()))]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_pulse_dev_runs_a_job_and_stops_everything(tmp_path: Path, tenants_file: Path) -> None:
    # given no PULSE_REDIS_URL: pulse dev embeds its own Redis
    api_port, flower_port, metrics_port = free_port(), free_port(), free_port()
    api_metrics_port, redis_port, receiver_port = free_port(), free_port(), free_port()
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
            "--api-metrics-port",
            str(api_metrics_port),
            "--redis-port",
            str(redis_port),
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
        assert f"pulse_jobs_submitted_total{label} 1.0" in _text(api_metrics_port, "/metrics")
        succeeded = f"pulse_jobs_succeeded_total{label} 1.0"
        wait_for(lambda: succeeded in _text(metrics_port, "/metrics"), timeout=30)
        # and from a second terminal in the same folder, with no PULSE_* variable set, the
        # README's `celery -A pulse_worker.app inspect ping` reaches the worker as written:
        # it finds the stack's URLs where pulse dev wrote them
        written = _dev_env(tmp_path / ".pulse" / "env")
        assert written["PULSE_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "pulse_worker.app", "inspect", "ping", "--timeout", "5"],
            cwd=tmp_path,
            env=child_env({}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
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
    # and .pulse/env no longer points other commands at a stack that is gone
    assert not (tmp_path / ".pulse" / "env").exists()


def test_a_command_finds_the_dev_stack_only_when_no_redis_url_is_set(tmp_path: Path) -> None:
    # given a folder where pulse dev wrote its URLs
    (tmp_path / ".pulse").mkdir()
    (tmp_path / ".pulse" / "env").write_text(
        "# Written by `pulse dev`\nPULSE_REDIS_URL=redis://127.0.0.1:6401/0\nPULSE_BROKER_URL=redis://127.0.0.1:6401/0\n"
        "PULSE_TENANTS_FILE=/elsewhere/tenants.toml\n"
    )
    # when a process there builds its settings with no PULSE_REDIS_URL of its own
    found = Settings.from_process_env({}, cwd=tmp_path)
    # then it uses the stack's URLs, and nothing else from the file
    assert found.redis_url == found.broker_url == "redis://127.0.0.1:6401/0"
    assert found.tenants_file is None
    # and a URL set in the environment wins over the file
    mine = Settings.from_process_env({"PULSE_REDIS_URL": "redis://127.0.0.1:6402/0"}, cwd=tmp_path)
    assert mine.redis_url == "redis://127.0.0.1:6402/0"
