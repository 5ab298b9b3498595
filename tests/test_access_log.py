"""The API's access log: off by default (the app's ``job accepted`` line stays), one line
per request with ``PULSE_API_ACCESS_LOG=on``, by ``pulse api`` as it runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from tests.support import ApiProcess, post_job_over_http, settings_env

QUEUE = "t-access-log"


def _log_records(api: ApiProcess) -> list[dict[str, object]]:
    records = []
    for line in api.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


@pytest.mark.timeout(120)
@pytest.mark.parametrize("access_log", [False, True], ids=["default-off", "on"])
def test_the_access_log_writes_a_line_per_request_only_when_switched_on(
    settings: Settings, redis: Redis, tmp_path: Path, access_log: bool
) -> None:
    # given pulse api as it runs, with the access log at its default (off) or switched on
    announce(redis, ["diag.echo"], 600)
    overrides = {"api_access_log": True} if access_log else {}
    api = ApiProcess(settings_env(replace(settings, default_queue=QUEUE, **overrides)), tmp_path / "api.log")
    api.start()
    try:
        # when a job is submitted
        status = post_job_over_http(api.port)
    finally:
        api.stop()
        redis.delete(QUEUE)

    # then it is accepted and the app logs it, whatever the switch
    assert status == 202
    records = _log_records(api)
    assert any(r.get("logger") == "pulse.api" and r.get("message") == "job accepted" for r in records)
    # and gunicorn's access line for it is there exactly when the access log is on
    access = [r for r in records if r.get("logger") == "gunicorn.access" and "POST /v1/jobs" in str(r.get("message"))]
    assert len(access) == (1 if access_log else 0), api.log()
