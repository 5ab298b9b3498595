"""The running API held to its own OpenAPI document by the schemathesis command line.

The same run an outsider would point at a deployment: every check, the examples,
coverage and fuzzing phases, and the stateful phase that follows the document's
OpenAPI links (submit -> read -> cancel; dead letter -> replay), within a fixed
budget, against ``pulse api`` (gunicorn) on a free port.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import TENANT_KEYS, ApiProcess, auth, settings_env, wait_for_state

#: A queue nobody consumes: fuzzed jobs are recorded and queued, never run.
FUZZ_QUEUE = "t-contract-live"
#: Examples per operation and phase; with the seed fixed, the run is the same each time.
MAX_EXAMPLES = 50
SEED = 1307
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def live_api(settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    announce(redis, ["diag.echo"], 600)
    folder = tmp_path_factory.mktemp("contract-live")
    api = ApiProcess(settings_env(replace(settings, default_queue=FUZZ_QUEUE)), folder / "api.log").start()
    yield api
    api.stop()
    redis.delete(FUZZ_QUEUE)


def test_schemathesis_finds_nothing_in_the_running_api(
    live_api: ApiProcess, live_client: FlaskClient, tmp_path: Path
) -> None:
    # given a dead letter of the tenant's own, so that the dead-letter links lead somewhere
    submitted = live_client.post(
        "/v1/jobs",
        json={"jobType": "diag.fail", "payload": {}, "options": {"maxRetries": 0}},
        headers=auth("acme"),
    )
    assert submitted.status_code == 202, submitted.get_data(as_text=True)
    wait_for_state(live_client, "acme", submitted.get_json()["jobId"], {"dead"}, timeout=60)
    # when schemathesis runs every check and every phase against the running API
    command = [
        SCHEMATHESIS,
        "--config-file",
        str(CONFIG),
        "run",
        f"{live_api.url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--header",
        f"Authorization: Bearer {TENANT_KEYS['acme']}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    # then it reports no failure (its summary is printed either way)
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-2000:]
