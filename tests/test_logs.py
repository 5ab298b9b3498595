"""Logs: one JSON object per line; a job's lines carry its ids and never its payload."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from pulse_api import create_app
from pulse_core.settings import Settings
from pulse_core.telemetry import logs
from tests.support import WorkerProcess, auth, wait_for, wait_for_state

SECRET = "s3cr3t-payload-value-7781"
IDS = ("jobId", "tenantId", "jobType", "attempt", "traceId")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line, parsed; fails on any line that is not one JSON object."""
    records = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
    return records


@contextlib.contextmanager
def captured_pulse_log() -> Iterator[io.StringIO]:
    """The "pulse" loggers' records at INFO, through Pulse's JSON handler, into a string."""
    stream = io.StringIO()
    handler = logs.make_handler(stream)
    pulse_logger = logging.getLogger("pulse")
    pulse_logger.addHandler(handler)
    old_level = pulse_logger.level
    pulse_logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        pulse_logger.removeHandler(handler)
        pulse_logger.setLevel(old_level)


def test_a_jobs_lines_are_json_with_its_ids_and_never_its_payload(
    observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    # given the API's log records going through Pulse's JSON handler
    with captured_pulse_log() as stream:
        client = create_app(observed_settings).test_client()
        # when a job with a recognisable payload is submitted, and one that fails
        body = {"jobType": "diag.echo", "payload": {"secret": SECRET}}
        job = client.post("/v1/jobs", json=body, headers=auth("acme")).get_json()
        failing = client.post(
            "/v1/jobs",
            json={"jobType": "diag.fail", "payload": {"s": SECRET}, "options": {"maxRetries": 0}},
            headers=auth("acme"),
        ).get_json()
        wait_for_state(client, "acme", job["jobId"], {"succeeded"}, timeout=60)
        wait_for_state(client, "acme", failing["jobId"], {"dead"}, timeout=60)

    # then the API's lines about it are JSON carrying its ids
    api_lines = [r for r in json_lines(stream.getvalue()) if r.get("jobId") == job["jobId"]]
    assert [r["message"] for r in api_lines] == ["job accepted"]
    expected = {
        "jobId": job["jobId"],
        "tenantId": "acme",
        "jobType": "diag.echo",
        "attempt": 0,
        "traceId": job["traceId"],
    }
    assert {k: api_lines[0][k] for k in IDS} == expected

    # and every line the worker wrote is JSON; those about the job carry its ids
    def worker_lines_for(job_id: str) -> list[dict[str, Any]]:
        return [r for r in json_lines(observed_worker.log()) if r.get("jobId") == job_id]

    echo_lines = wait_for(lambda: len(worker_lines_for(job["jobId"])) >= 2 and worker_lines_for(job["jobId"]))
    for record in echo_lines:
        assert {k: record[k] for k in IDS} == {**expected, "attempt": 1}, record
        assert {"time", "level", "logger", "message"} <= record.keys()
    assert any("succeeded" in r["message"] for r in echo_lines)
    dead_lines = wait_for(lambda: [r for r in worker_lines_for(failing["jobId"]) if "dead" in r["message"]])
    assert dead_lines[0]["jobType"] == "diag.fail" and dead_lines[0]["level"] == "INFO"
    # and no line anywhere contains the payload
    assert SECRET not in stream.getvalue()
    assert SECRET not in observed_worker.log()


def test_a_batch_logs_one_accepted_line_per_created_job_with_its_own_ids(settings: Settings) -> None:
    # given the API's log records going through Pulse's JSON handler
    key = f"log-batch-{uuid.uuid4().hex}"
    jobs = [
        {"jobType": "diag.echo", "payload": {"secret": SECRET}, "idempotencyKey": key},
        {"jobType": "diag.echo", "payload": {"secret": SECRET}, "idempotencyKey": key},  # a replay
        {"jobType": "diag.sleep", "payload": {"seconds": 0}, "metadata": {"traceId": "c" * 32}},
    ]
    with captured_pulse_log() as stream:
        # when a batch with two new jobs and a replay is submitted
        response = create_app(settings).test_client().post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [item["status"] for item in items] == [202, 200, 202]

    # then each new job has one "job accepted" line with its own ids, the replay none,
    # and no line holds a payload
    accepted = [r for r in json_lines(stream.getvalue()) if r["message"] == "job accepted"]
    expected = [
        {"jobId": job["jobId"], "tenantId": "acme", "jobType": job["jobType"], "attempt": 0, "traceId": job["traceId"]}
        for job in (items[0]["job"], items[2]["job"])
    ]
    assert [{k: line[k] for k in IDS} for line in accepted] == expected
    assert SECRET not in stream.getvalue()


def _record(msg: Any = "job accepted", *, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogger("pulse.api").makeRecord(
        "pulse.api", logging.INFO, __file__, 1, msg, (), exc_info, extra=extra
    )


def test_pulses_json_formatter_writes_the_text_python_json_logger_writes() -> None:
    # given the library's own formatter configured as Pulse's, and Pulse's
    library = JsonFormatter(
        "{levelname}{name}{process}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",
    )
    pulse = logs.json_formatter()
    # when each formats the same records: plain, with ids, with values only the library's
    # encoder knows (a datetime, a set, an exception), with a traceback, a dict message
    records = [
        _record(),
        _record(jobId="j", tenantId="t", jobType="x", attempt=0, traceId="a" * 32),
        _record(when=datetime(2026, 1, 1, tzinfo=UTC), tags={"a"}, error=ValueError("no"), text="é\u2028"),
        _record(exc=True, jobId="j"),
        _record({"event": "x", "n": 1}),
    ]
    # then the lines are the same text
    for record in records:
        assert pulse.format(record) == library.format(record)


def test_a_batchs_lines_go_through_a_custom_record_factory(settings: Settings) -> None:
    # given a LogRecord factory that adds a field of its own to each record
    old_factory = logging.getLogRecordFactory()
    counter = iter(range(1000))

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        record.serial = next(counter)  # type: ignore[attr-defined]
        return record

    jobs = [{"jobType": "diag.echo", "payload": {}} for _ in range(3)]
    logging.setLogRecordFactory(factory)
    try:
        with captured_pulse_log() as stream:
            # when a batch of three new jobs is submitted
            response = create_app(settings).test_client().post("/v1/batches", json={"jobs": jobs}, headers=auth("acme"))
    finally:
        logging.setLogRecordFactory(old_factory)
    assert response.status_code == 200
    # then each job's line is a record of the factory's own, with its own field
    accepted = [r for r in json_lines(stream.getvalue()) if r["message"] == "job accepted"]
    assert len(accepted) == 3
    assert len({line["serial"] for line in accepted}) == 3
    assert [line["jobId"] for line in accepted] == [item["job"]["jobId"] for item in response.get_json()["items"]]


def test_a_batch_builds_no_line_when_info_is_off(settings: Settings) -> None:
    # given the API's logger above INFO, and a record factory that counts what is built
    old_factory = logging.getLogRecordFactory()
    built: list[str] = []

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        built.append(record.getMessage())
        return record

    api_logger = logging.getLogger("pulse.api")
    old_level = api_logger.level
    api_logger.setLevel(logging.WARNING)
    logging.setLogRecordFactory(factory)
    try:
        # when a batch is submitted
        response = (
            create_app(settings)
            .test_client()
            .post("/v1/batches", json={"jobs": [{"jobType": "diag.echo", "payload": {}}] * 3}, headers=auth("acme"))
        )
    finally:
        logging.setLogRecordFactory(old_factory)
        api_logger.setLevel(old_level)
    # then no "job accepted" record was built
    assert response.status_code == 200
    assert "job accepted" not in built
