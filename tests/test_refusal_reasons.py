"""A refusal is counted under the reason its error class carries (never re-read from the problem type)."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pulse_api import create_app
from pulse_core import errors
from pulse_core.settings import Settings
from pulse_core.store.job_types import announce
from pulse_core.telemetry.metrics import RejectReason
from tests.support import auth, scrape_api


def _rejected(text: str, tenant: str, reason: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pulse_jobs_rejected_total"
        and sample.labels.get("tenant") == tenant
        and sample.labels.get("reason") == reason
    )


def test_every_error_class_carries_a_reason_the_metrics_know() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PulseError)]
    assert {RejectReason(c.reason) for c in classes} <= set(RejectReason)
    assert errors.RateLimited.reason == RejectReason.RATE_LIMIT
    assert errors.BacklogFull.reason == RejectReason.BACKLOG
    assert errors.IdempotencyConflict.reason == RejectReason.IDEMPOTENCY_CONFLICT


def test_refusals_count_by_the_reason_of_their_error(settings: Settings, redis: Redis) -> None:
    # given a tenant that may have one job pending, and one queued already under a key
    queue = "t-refusal-reasons"
    client = create_app(replace(settings, default_queue=queue)).test_client()
    announce(redis, ["diag.echo"], 600)
    first = client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": {"n": 1}, "idempotencyKey": "k"}, headers=auth("refusals")
    )
    assert first.status_code == 202
    before = scrape_api(client)
    # when a second job is refused for the backlog, and the key is reused with another body
    backlog = client.post("/v1/jobs", json={"jobType": "diag.echo", "payload": {"n": 2}}, headers=auth("refusals"))
    reused = client.post(
        "/v1/jobs", json={"jobType": "diag.echo", "payload": {"n": 3}, "idempotencyKey": "k"}, headers=auth("refusals")
    )
    # then each answer says why, with the headers the API sets, and each counts under its own reason
    assert backlog.status_code == 429 and backlog.headers["Retry-After"] == "1"
    assert backlog.headers["RateLimit-Limit"]
    assert reused.status_code == 422 and reused.headers["RateLimit-Limit"]
    after = scrape_api(client)
    for reason in ("backlog", "idempotency_conflict"):
        assert _rejected(after, "refusals", reason) - _rejected(before, "refusals", reason) == 1
    client.post(f"/v1/jobs/{first.get_json()['jobId']}/cancel", headers=auth("refusals"))
    redis.delete(queue)
