"""HTTP handlers: registration, the SSRF guard, signed delivery and the outcome table.

Everything runs for real: the API app, a Celery worker subprocess (threads pool, as
docs/http-handlers.md says to run HTTP queues), and a receiver HTTP server on loopback
(tests/http_receiver.py). Signatures are checked with the PyPI ``standardwebhooks``
package, not Pulse's code.

Name resolution: the guard consults ``PULSE_HTTP_HANDLER_HOSTS`` (name=address) before
DNS. The API process maps ``rebind.test`` to a public address and the worker maps it to
``127.0.0.2``, as a DNS answer that changes between registration and delivery would.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from standardwebhooks import Webhook

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis, free_port
from pulse_core import keys
from pulse_core.errors import ConfigError
from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.http_handlers.guard import refusal
from pulse_core.settings import Settings
from pulse_worker.http_delivery import REGISTRATION_CACHE_SECONDS
from tests.conftest import DIAG_TYPES
from tests.http_receiver import BIG_BODY_BYTES, Receiver
from tests.invariants import backlog_mismatches
from tests.support import (
    WorkerProcess,
    auth,
    forget_http_handlers,
    settings_env,
    wait_for,
    wait_for_state,
    write_tenants_file,
)

QUEUE = "http-handlers"
SECRET_KEY = Fernet.generate_key().decode()
PUBLIC_ADDRESS = "93.184.216.34"


@pytest.fixture(scope="module", autouse=True)
def _forget_registrations(redis: Redis) -> Iterator[None]:
    """Registrations outlive apps: remove them so later tests' apps need no secret key."""
    yield
    forget_http_handlers(redis)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def rebound_receiver() -> Iterator[Receiver]:
    """Where ``rebind.test`` leads at delivery time: must never see a connection."""
    with Receiver("127.0.0.2") as server:
        yield server


def _app_with_env(settings: Settings, env: dict[str, str]) -> Flask:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return create_app(settings)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _http_env(allow: str, hosts: str) -> dict[str, str]:
    return {
        "PULSE_SECRET_KEY": SECRET_KEY,
        "PULSE_HTTP_HANDLER_ALLOW": allow,
        "PULSE_HTTP_HANDLER_HOSTS": hosts,
        "PULSE_HTTP_RETRY_AFTER_MAX_SECONDS": "30",
    }


@pytest.fixture(scope="module")
def http_settings(settings: Settings) -> Settings:
    return replace(settings, default_queue=QUEUE)


@pytest.fixture(scope="module")
def api(http_settings: Settings) -> Flask:
    return _app_with_env(http_settings, _http_env("127.0.0.1/32,http", f"rebind.test={PUBLIC_ADDRESS}"))


@pytest.fixture
def client(api: Flask) -> FlaskClient:
    return api.test_client()


def _worker_env(settings: Settings, folder: Path) -> dict[str, str]:
    env = settings_env(settings)
    env.update(_http_env("127.0.0.1/32,http", "rebind.test=127.0.0.2"))
    return env


@pytest.fixture(scope="module")
def http_worker(
    http_settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker process, threads pool, on the HTTP queue, serving its metrics."""
    folder = tmp_path_factory.mktemp("http-worker")
    (folder / "metrics").mkdir()
    env = _worker_env(http_settings, folder)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    env["PULSE_WORKER_METRICS_PORT"] = str(free_port())
    process = WorkerProcess(env, folder / "worker.log", queues=(QUEUE,), pool="threads", concurrency=16).start()
    process.metrics_port = int(env["PULSE_WORKER_METRICS_PORT"])
    process.wait_ready(redis, DIAG_TYPES)
    yield process
    process.stop()


def register(client: FlaskClient, tenant: str, job_type: str, **body: Any) -> Any:
    return client.put(f"/v1/handlers/{job_type}", json=body, headers=auth(tenant))


def submit(client: FlaskClient, tenant: str, job_type: str, payload: Any = None, **extra: Any) -> str:
    headers = {**auth(tenant), **extra.pop("headers", {})}
    response = client.post("/v1/jobs", json={"jobType": job_type, "payload": payload or {}, **extra}, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id: str = response.get_json()["jobId"]
    return job_id


def deliveries_of(receiver: Receiver, path: str, job_id: str) -> list[Any]:
    return [r for r in receiver.state.to(path) if r.headers.get("pulse-job-id") == job_id]


# --- registration -------------------------------------------------------------------


def test_registration_shows_the_secret_once_and_is_the_tenants_alone(client: FlaskClient, receiver: Receiver) -> None:
    # given acme registers an endpoint
    created = register(client, "acme", "hooks.mine", url=receiver.url("/ok"), timeoutSeconds=5, maxRetries=2)
    assert created.status_code == 201, created.get_data(as_text=True)
    doc = created.get_json()
    assert doc["secret"].startswith("whsec_") and doc["version"] == 1 and doc["maxRetries"] == 2
    # then reading it back never shows the secret
    again = client.get("/v1/handlers/hooks.mine", headers=auth("acme")).get_json()
    assert "secret" not in again and again["url"] == receiver.url("/ok")
    assert [h["jobType"] for h in client.get("/v1/handlers", headers=auth("acme")).get_json()["items"]] == [
        "hooks.mine"
    ]
    # and the secret is encrypted at rest: it is nowhere in Redis as plain text
    raw = str(client.application.extensions["pulse"].redis.hget(keys.http_handlers("acme"), "hooks.mine"))
    assert doc["secret"] not in raw and doc["secret"][6:] not in raw
    # when another tenant reads or deletes it, it does not exist for them
    assert client.get("/v1/handlers/hooks.mine", headers=auth("globex")).status_code == 404
    assert client.delete("/v1/handlers/hooks.mine", headers=auth("globex")).status_code == 404
    assert client.post("/v1/handlers/hooks.mine/rotate-secret", headers=auth("globex")).status_code == 404
    assert client.get("/v1/handlers", headers=auth("globex")).get_json()["items"] == []
    # and a PUT by the other tenant makes its own registration, never replacing acme's
    theirs = register(client, "globex", "hooks.mine", url=receiver.url("/404"))
    assert theirs.status_code == 201
    ours = client.get("/v1/handlers/hooks.mine", headers=auth("acme")).get_json()
    assert ours["url"] == receiver.url("/ok") and ours["version"] == 1
    # when acme replaces its own, the version grows and no secret is shown
    replaced = register(client, "acme", "hooks.mine", url=receiver.url("/ok"), timeoutSeconds=7)
    assert replaced.status_code == 200 and replaced.get_json()["version"] == 2
    assert "secret" not in replaced.get_json()
    # and deleting works once, then 404
    assert client.delete("/v1/handlers/hooks.mine", headers=auth("globex")).status_code == 204
    assert client.delete("/v1/handlers/hooks.mine", headers=auth("globex")).status_code == 404


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://127.0.0.2:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fd00::1]/hook", "private"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("not a url", "URL"),
        ("ftp://example.com/x", "http"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("http://127.0.0.1/" + "a" * 10_000, "2048"),
    ],
)
def test_a_bad_url_is_refused_naming_url_and_nothing_is_stored(client: FlaskClient, url: str, why: str) -> None:
    # when a tenant registers a private, loopback, metadata or malformed URL
    response = register(client, "acme", "hooks.bad", url=url)
    # then 422 names url, says why, and nothing was stored
    assert response.status_code == 422, response.get_data(as_text=True)
    problem = response.get_json()
    assert "url" in problem["errors"]
    assert why.lower() in " ".join(problem["errors"]["url"]).lower() + problem.get("detail", "").lower()
    assert client.get("/v1/handlers/hooks.bad", headers=auth("acme")).status_code == 404


def test_plain_http_needs_the_operators_switch(http_settings: Settings, receiver: Receiver) -> None:
    # given an API whose operator allowed loopback but not plain http
    app = _app_with_env(http_settings, _http_env("127.0.0.1/32", ""))
    response = register(app.test_client(), "acme", "hooks.plain", url=receiver.url("/ok"))
    # then an http:// URL is refused, naming url
    assert response.status_code == 422 and "http" in response.get_json()["errors"]["url"][0]


def test_a_jobtype_a_python_handler_serves_is_refused_with_409(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    response = register(client, "acme", "diag.echo", url=receiver.url("/ok"))
    assert response.status_code == 409
    assert "Python handler" in response.get_json()["detail"]
    assert client.get("/v1/handlers/diag.echo", headers=auth("acme")).status_code == 404


def test_bad_fields_are_422_naming_them(client: FlaskClient, receiver: Receiver) -> None:
    for body, field in (
        ({"url": receiver.url("/ok"), "rateLimit": "lots"}, "rateLimit"),
        ({"url": receiver.url("/ok"), "timeoutSeconds": 0}, "timeoutSeconds"),
        ({"url": receiver.url("/ok"), "headers": {"webhook-signature": "x"}}, "headers"),
        ({"url": receiver.url("/ok"), "colour": "red"}, "colour"),
        ({}, "url"),
    ):
        response = client.put("/v1/handlers/hooks.fields", json=body, headers=auth("acme"))
        assert response.status_code == 422, (body, response.get_data(as_text=True))
        assert field in response.get_json()["errors"], response.get_json()
    bad_name = client.put("/v1/handlers/bad name!", json={"url": receiver.url("/ok")}, headers=auth("acme"))
    assert bad_name.status_code == 422 and "jobType" in bad_name.get_json()["errors"]


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        # the execution gate keeps `amount` starts a window: 0 kept every start (LTRIM 0 -1)
        ({"rateLimit": "0/second"}, "rateLimit", "lets nothing through"),
        ({"rateLimit": "1/second;0/hour"}, "rateLimit", "lets nothing through"),
        ({"rateLimit": "1/1000000 years"}, "rateLimit", "longer than a year"),
        ({"rateLimit": "99999999999999999999/year"}, "rateLimit", "at most 10000"),
        # values the worker's HTTP client can never send (every delivery of the jobType failed)
        ({"headers": {"X-Token": "a\r\nInjected: 1"}}, "headers", "no line breaks"),
        ({"headers": {"X-Token": "caf\u00e9"}}, "headers", "non-ASCII"),
        ({"headers": {"X-Token": "a\u0000b"}}, "headers", "control"),
        # numbers are JSON numbers, as at submit: "30" is not 30, and 1.5 is not silently 1
        ({"timeoutSeconds": "30"}, "timeoutSeconds", "integer"),
        ({"timeoutSeconds": 5.9}, "timeoutSeconds", "integer"),
        ({"maxConcurrency": 1.5}, "maxConcurrency", "integer"),
        ({"backoff": "2"}, "backoff", "number"),
    ],
)
def test_a_registration_that_could_never_deliver_or_would_grow_without_bound_is_refused(
    client: FlaskClient, receiver: Receiver, extra: dict[str, Any], field: str, why: str
) -> None:
    # given a tenant without a handler for hooks.unsendable
    client.delete("/v1/handlers/hooks.unsendable", headers=auth("acme"))
    # when it registers one with a field no delivery could honour
    body = {"url": receiver.url("/ok"), **extra}
    response = client.put("/v1/handlers/hooks.unsendable", json=body, headers=auth("acme"))
    # then it is a 422 naming the field and saying why, and nothing is stored
    assert response.status_code == 422, (body, response.get_data(as_text=True))
    problem = response.get_json()
    named = [message for name, messages in problem["errors"].items() if name.startswith(field) for message in messages]
    assert why in " ".join(named), problem
    assert client.get("/v1/handlers/hooks.unsendable", headers=auth("acme")).status_code == 404


def test_a_lone_surrogate_in_a_registration_is_refused_naming_url(client: FlaskClient, receiver: Receiver) -> None:
    # given a URL holding a lone surrogate: valid JSON, but text no request line can carry
    raw = '{"url": "' + receiver.url("/ok") + '\\ud800"}'
    # when it is registered
    response = client.put(
        "/v1/handlers/hooks.surrogate", data=raw, headers=auth("acme"), content_type="application/json"
    )
    # then it is a 422 naming url, and nothing is stored
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "url" in response.get_json()["errors"]
    assert client.get("/v1/handlers/hooks.surrogate", headers=auth("acme")).status_code == 404


def test_a_header_value_with_inner_spaces_is_still_accepted(client: FlaskClient, receiver: Receiver) -> None:
    body = {"url": receiver.url("/ok"), "headers": {"Authorization": "Token abc\tdef", "X-Empty": ""}}
    response = client.put("/v1/handlers/hooks.spaces", json=body, headers=auth("acme"))
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    assert client.delete("/v1/handlers/hooks.spaces", headers=auth("acme")).status_code == 204


def test_a_missing_secret_key_stops_the_api_once_a_handler_exists(
    client: FlaskClient, http_settings: Settings, receiver: Receiver
) -> None:
    # given a registration exists
    assert register(client, "acme", "hooks.keyed", url=receiver.url("/ok")).status_code == 201
    # when an API starts without PULSE_SECRET_KEY, then it stops naming the variable
    saved = os.environ.pop("PULSE_SECRET_KEY", None)
    try:
        with pytest.raises(ConfigError, match="PULSE_SECRET_KEY"):
            create_app(http_settings)
    finally:
        if saved is not None:
            os.environ["PULSE_SECRET_KEY"] = saved


# --- delivery --------------------------------------------------------------------------


def test_a_delivery_is_signed_traced_versioned_and_succeeds(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given acme's endpoint, and another tenant that has none under that name
    created = register(client, "acme", "hooks.ok", url=receiver.url("/ok"), headers={"X-Api-Key": "k1"}).get_json()
    secret = created["secret"]
    assert created["headers"] == {"X-Api-Key": "<redacted>"}
    refused = client.post("/v1/jobs", json={"jobType": "hooks.ok", "payload": {}}, headers=auth("globex"))
    assert refused.status_code == 422 and refused.get_json()["type"].endswith("unknown-job-type")
    # when a job is submitted with the caller's traceparent
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    job_id = submit(
        client,
        "acme",
        "hooks.ok",
        {"n": 1},
        metadata={"team": "a"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    # then it succeeds with the receiver's JSON answer as its result, and shows the version
    doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"})
    assert doc["state"] == "succeeded", doc
    assert doc["result"] == {"echo": {"n": 1}} and doc["handlerVersion"] == 1
    # and the request verifies with the standardwebhooks package
    (delivery,) = deliveries_of(receiver, "/ok", job_id)
    body = Webhook(secret).verify(delivery.body, delivery.headers)
    assert body == {
        "jobId": job_id,
        "jobType": "hooks.ok",
        "tenantId": "acme",
        "attempt": 1,
        "payload": {"n": 1},
        "metadata": {"team": "a"},
        "attemptToken": body["attemptToken"],
    }
    assert delivery.headers["webhook-id"] == f"{job_id}.1"
    assert delivery.headers["x-api-key"] == "k1"  # the static header, sent but never shown again
    # and it carries the caller's trace
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-01", delivery.headers["traceparent"])
    # when the registration is replaced, the next job shows the new version (once the
    # worker's one-second cache of it has expired)
    register(client, "acme", "hooks.ok", url=receiver.url("/ok"), timeoutSeconds=9)
    time.sleep(REGISTRATION_CACHE_SECONDS + 0.2)
    second = wait_for_state(client, "acme", submit(client, "acme", "hooks.ok"), {"succeeded", "dead"})
    assert second["handlerVersion"] == 2 and second["options"]["timeoutSeconds"] == 9


def test_a_rotated_secret_signs_alongside_the_old_one_during_its_grace(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    old = register(client, "acme", "hooks.rotate", url=receiver.url("/ok")).get_json()["secret"]
    rotated = client.post("/v1/handlers/hooks.rotate/rotate-secret", json={"graceSeconds": 600}, headers=auth("acme"))
    assert rotated.status_code == 200 and rotated.get_json()["previousSecretValidUntil"]
    new = rotated.get_json()["secret"]
    assert new != old
    time.sleep(REGISTRATION_CACHE_SECONDS + 0.2)  # the worker's cache of the registration
    job_id = submit(client, "acme", "hooks.rotate")
    assert wait_for_state(client, "acme", job_id, {"succeeded", "dead"})["state"] == "succeeded"
    (delivery,) = deliveries_of(receiver, "/ok", job_id)
    Webhook(new).verify(delivery.body, delivery.headers)  # the new secret verifies
    Webhook(old).verify(delivery.body, delivery.headers)  # and so does the old one, for now
    # a rotation without grace drops the old secret at once
    newest = client.post("/v1/handlers/hooks.rotate/rotate-secret", json={"graceSeconds": 0}, headers=auth("acme"))
    time.sleep(REGISTRATION_CACHE_SECONDS + 0.2)
    job_id = submit(client, "acme", "hooks.rotate")
    assert wait_for_state(client, "acme", job_id, {"succeeded", "dead"})["state"] == "succeeded"
    (delivery,) = deliveries_of(receiver, "/ok", job_id)
    Webhook(newest.get_json()["secret"]).verify(delivery.body, delivery.headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new).verify(delivery.body, delivery.headers)


def test_a_rotation_on_an_api_whose_clock_runs_behind_keeps_the_old_secrets_whole_grace(
    http_settings: Settings, client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a registration, and an API process whose clock runs an hour behind Redis' and the worker's
    old = register(client, "acme", "hooks.rotate-behind", url=receiver.url("/ok")).get_json()["secret"]
    real = time.time
    with pytest.MonkeyPatch.context() as behind:
        behind.setattr(time, "time", lambda: real() - 3600)
        behind_api = _app_with_env(http_settings, _http_env("127.0.0.1/32,http", f"rebind.test={PUBLIC_ADDRESS}"))
        # when that API rotates the secret with ten minutes' grace
        rotated = behind_api.test_client().post(
            "/v1/handlers/hooks.rotate-behind/rotate-secret", json={"graceSeconds": 600}, headers=auth("acme")
        )
    assert rotated.status_code == 200, rotated.get_data(as_text=True)
    time.sleep(REGISTRATION_CACHE_SECONDS + 0.2)  # the worker's cache of the registration
    job_id = submit(client, "acme", "hooks.rotate-behind")
    assert wait_for_state(client, "acme", job_id, {"succeeded", "dead"})["state"] == "succeeded"
    # then the next delivery is still signed with the old secret too: its grace is timed by
    # Redis' clock, not cut short by the rotating host's
    (delivery,) = deliveries_of(receiver, "/ok", job_id)
    Webhook(rotated.get_json()["secret"]).verify(delivery.body, delivery.headers)
    Webhook(old).verify(delivery.body, delivery.headers)


def test_each_tenant_gets_its_own_endpoint_for_the_same_jobtype(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    register(client, "acme", "hooks.shared", url=receiver.url("/ok"))
    register(client, "globex", "hooks.shared", url=receiver.url("/404"))
    ours = submit(client, "acme", "hooks.shared")
    theirs = submit(client, "globex", "hooks.shared")
    assert wait_for_state(client, "acme", ours, {"succeeded", "dead"})["state"] == "succeeded"
    assert wait_for_state(client, "globex", theirs, {"succeeded", "dead"})["state"] == "dead"
    assert deliveries_of(receiver, "/ok", ours) and not deliveries_of(receiver, "/ok", theirs)
    assert deliveries_of(receiver, "/404", theirs) and not deliveries_of(receiver, "/404", ours)


@pytest.mark.parametrize(
    ("path", "deliveries", "state", "status", "response_class"),
    [
        ("/hang", 2, "dead", None, "timeout"),
        ("/reset", 2, "dead", None, "connection"),
        ("/500", 2, "dead", 500, "5xx"),
        ("/404", 1, "dead", 404, "4xx"),
        ("/redirect", 1, "dead", 302, "3xx"),
        ("/empty", 1, "succeeded", None, None),
    ],
)
def test_the_outcome_follows_the_response(
    client: FlaskClient,
    receiver: Receiver,
    http_worker: WorkerProcess,
    path: str,
    deliveries: int,
    state: str,
    status: int | None,
    response_class: str | None,
) -> None:
    # given an endpoint allowed one retry and a one-second time limit
    job_type = "hooks.outcome" + path.replace("/", ".")
    register(client, "acme", job_type, url=receiver.url(path), timeoutSeconds=1, maxRetries=1, backoff=0.1)
    # when a job is delivered to it
    job_id = submit(client, "acme", job_type)
    doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)
    # then it ends as the table says, after as many deliveries as the table says
    assert doc["state"] == state, doc
    assert len(deliveries_of(receiver, path, job_id)) == deliveries
    if state == "dead":
        assert doc["error"]["responseClass"] == response_class
        assert doc["error"].get("status") == status
        assert doc["attempts"] == deliveries
    if path == "/500":  # the first KiB of the body, no more
        assert doc["error"]["body"] == "E" * 1024
    if path == "/redirect":
        assert "not followed" in doc["error"]["message"]


def test_429_is_retried_after_retry_after(client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess) -> None:
    register(client, "acme", "hooks.429", url=receiver.url("/429"), maxRetries=1, backoff=0)
    job_id = submit(client, "acme", "hooks.429")
    doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)
    assert doc["state"] == "succeeded" and doc["result"] == {"second": True}
    first, second = deliveries_of(receiver, "/429", job_id)
    assert second.at - first.at >= 1.9  # Retry-After: 2 (the backoff alone would be 0)
    assert [first.headers["webhook-id"], second.headers["webhook-id"]] == [f"{job_id}.1", f"{job_id}.2"]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the worker's memory")
def test_a_50_mb_answer_is_read_only_up_to_its_cap(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    assert http_worker.process is not None
    before = _rss_kib(http_worker.process.pid)
    register(client, "acme", "hooks.big", url=receiver.url("/big"), maxRetries=0)
    register(client, "acme", "hooks.big500", url=receiver.url("/big500"), maxRetries=0)
    big = submit(client, "acme", "hooks.big")
    big500 = submit(client, "acme", "hooks.big500")
    doc = wait_for_state(client, "acme", big, {"succeeded", "dead"}, timeout=30)
    doc500 = wait_for_state(client, "acme", big500, {"succeeded", "dead"}, timeout=30)
    # then a 2xx over the result cap is dead (the same answer every time), a 500 keeps 1 KiB
    assert doc["state"] == "dead" and "result cap" in doc["error"]["message"] and doc["error"]["status"] == 200
    assert doc500["state"] == "dead" and len(doc500["error"]["body"]) == 1024
    # and the worker hung up long before 50 MB: its memory did not take the body in
    assert receiver.state.big_bytes_sent < BIG_BODY_BYTES / 2
    assert _rss_kib(http_worker.process.pid) - before < 30 * 1024


def test_a_name_that_resolves_to_a_private_address_at_delivery_is_dead_without_a_connection(
    client: FlaskClient, rebound_receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a name that resolved to a public address when it was registered
    url = rebound_receiver.url("/ok", host="rebind.test")
    assert register(client, "acme", "hooks.rebind", url=url, maxRetries=3).status_code == 201
    # when, at delivery, it resolves to 127.0.0.2 (not allowed: only 127.0.0.1/32 is)
    job_id = submit(client, "acme", "hooks.rebind")
    doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"})
    # then the job is dead at once, saying why, and no connection was made there
    assert doc["state"] == "dead" and doc["attempts"] == 1
    assert doc["error"]["responseClass"] == "refused"
    assert "rebind.test resolves to 127.0.0.2" in doc["error"]["message"]
    assert rebound_receiver.state.connections == 0


def test_one_process_holds_many_deliveries_at_once(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a receiver that answers after half a second, and a threads worker of concurrency 16
    register(client, "acme", "hooks.slow", url=receiver.url("/slow"))
    jobs = [submit(client, "acme", "hooks.slow", {"seconds": 0.5}) for _ in range(12)]
    for job_id in jobs:
        assert wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=30)["state"] == "succeeded"
    # then the one worker process had several deliveries in flight together
    assert receiver.state.most_in_flight >= 4
    # and each job was delivered exactly once
    assert all(len(deliveries_of(receiver, "/slow", j)) == 1 for j in jobs)


def test_metrics_count_deliveries_by_response_class(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    register(client, "acme", "hooks.metered", url=receiver.url("/ok"))
    register(client, "acme", "hooks.metered404", url=receiver.url("/404"))
    for job_type in ("hooks.metered", "hooks.metered", "hooks.metered404"):
        wait_for_state(client, "acme", submit(client, "acme", job_type), {"succeeded", "dead"})

    def scraped() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_worker.metrics_port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    def has(job_type: str, response_class: str, count: float) -> bool:
        pattern = (
            rf'pulse_http_deliveries_total\{{(?=[^}}]*job_type="{re.escape(job_type)}")'
            rf'(?=[^}}]*response_class="{response_class}")(?=[^}}]*tenant="acme")[^}}]*\}} (\S+)'
        )
        found = re.search(pattern, scraped())
        return found is not None and float(found.group(1)) == count

    wait_for(lambda: has("hooks.metered", "2xx", 2.0) and has("hooks.metered404", "4xx", 1.0), timeout=10)


def test_sigkill_during_a_delivery_delivers_it_again(
    http_settings: Settings, redis: Redis, receiver: Receiver, tmp_path: Path
) -> None:
    # given a worker of its own, on a queue of its own, and a receiver that holds the first delivery
    settings = replace(http_settings, default_queue="http-kill")
    app = _app_with_env(settings, _http_env("127.0.0.1/32,http", ""))
    client = app.test_client()
    register(client, "acme", "hooks.hold", url=receiver.url("/hold"), timeoutSeconds=60, maxRetries=2)
    env = _worker_env(settings, tmp_path)
    first = WorkerProcess(env, tmp_path / "first.log", queues=("http-kill",), pool="threads", concurrency=4).start()
    first.wait_ready(redis, DIAG_TYPES)
    job_id = submit(client, "acme", "hooks.hold")
    assert receiver.state.hold_started.wait(30)
    # when the worker is SIGKILLed mid-delivery and another one starts
    first.kill_group()
    first.stop()  # reaps what is left and closes its log
    receiver.state.hold_release.set()
    second = WorkerProcess(env, tmp_path / "second.log", queues=("http-kill",), pool="threads", concurrency=4).start()
    try:
        second.wait_ready(redis, DIAG_TYPES)
        # then the job is delivered again, next attempt, same webhook-id prefix, and succeeds
        doc = wait_for_state(client, "acme", job_id, {"succeeded", "dead"}, timeout=60)
    finally:
        second.stop()
    assert doc["state"] == "succeeded", doc
    ids = [d.headers["webhook-id"] for d in deliveries_of(receiver, "/hold", job_id)]
    assert ids == [f"{job_id}.1", f"{job_id}.2"]


# --- long jobs (202) -------------------------------------------------------------------


def _token_of(receiver: Receiver, job_id: str, attempt: int) -> str:
    found = wait_for(lambda: len(deliveries_of(receiver, "/accept", job_id)) >= attempt, timeout=30)
    assert found
    token: str = deliveries_of(receiver, "/accept", job_id)[attempt - 1].json()["attemptToken"]
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_202_job_stays_running_under_heartbeats_and_completes(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess, http_settings: Settings
) -> None:
    # given a receiver that answers 202, with a 2-second time limit (the lease it gets)
    register(client, "acme", "hooks.long", url=receiver.url("/accept"), timeoutSeconds=2, maxRetries=0)
    job_id = submit(client, "acme", "hooks.long")
    token = _token_of(receiver, job_id, 1)
    # when it heartbeats for longer than the lease and the recovery bound
    for _ in range(4):
        beat = client.post(f"/v1/jobs/{job_id}/heartbeat", json={"extendSeconds": 2}, headers=_bearer(token))
        assert beat.status_code == 200, beat.get_data(as_text=True)
        time.sleep(1.0)
    # then the job is still running, attempt 1, never delivered again
    doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
    assert doc["state"] == "running" and doc["attempts"] == 1
    assert len(deliveries_of(receiver, "/accept", job_id)) == 1
    # when it completes with a result, then the job succeeded with it
    done = client.post(f"/v1/jobs/{job_id}/complete", json={"result": {"rows": 3}}, headers=_bearer(token))
    assert done.status_code == 200 and done.get_json()["state"] == "succeeded"
    assert client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()["result"] == {"rows": 3}
    # and the token is spent; a tenant's API key is no attempt token
    again = client.post(f"/v1/jobs/{job_id}/complete", json={"result": 1}, headers=_bearer(token))
    assert again.status_code == 401
    assert client.post(f"/v1/jobs/{job_id}/heartbeat", headers=auth("acme")).status_code == 401


def test_a_completion_sent_again_after_its_answer_was_lost_is_answered_as_the_first(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a 202 job that completed with a result, the answer lost on its way to the receiver
    register(client, "acme", "hooks.resent", url=receiver.url("/accept"), timeoutSeconds=30, maxRetries=0)
    job_id = submit(client, "acme", "hooks.resent")
    token = _token_of(receiver, job_id, 1)
    first = client.post(f"/v1/jobs/{job_id}/complete", json={"result": {"rows": 3}}, headers=_bearer(token))
    assert first.status_code == 200, first.get_data(as_text=True)
    # when the receiver sends the same completion again, twice
    for _ in range(2):
        again = client.post(f"/v1/jobs/{job_id}/complete", json={"result": {"rows": 3}}, headers=_bearer(token))
        # then it is answered as the first was, with the job unchanged
        assert again.status_code == 200, again.get_data(as_text=True)
        assert again.get_json() == first.get_json()
    # and another outcome with that token is refused: it can only repeat what it reported
    other = client.post(f"/v1/jobs/{job_id}/complete", json={"error": "late"}, headers=_bearer(token))
    assert other.status_code == 401
    doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
    assert doc["state"] == "succeeded" and doc["attempts"] == 1 and doc["result"] == {"rows": 3}


def test_a_retryable_error_sent_again_does_not_retry_twice(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a 202 job allowed two retries whose first attempt reported a retryable error
    register(client, "acme", "hooks.twice", url=receiver.url("/accept"), timeoutSeconds=30, maxRetries=2, backoff=0)
    job_id = submit(client, "acme", "hooks.twice")
    first = _token_of(receiver, job_id, 1)
    reported = client.post(f"/v1/jobs/{job_id}/complete", json={"error": "busy"}, headers=_bearer(first))
    assert reported.status_code == 200 and reported.get_json()["state"] == "retrying"
    second = _token_of(receiver, job_id, 2)
    # when the first attempt's error is sent again (its answer was lost), concurrently with itself
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: client.post(f"/v1/jobs/{job_id}/complete", json={"error": "busy"}, headers=_bearer(first)),
                range(4),
            )
        )
    # then each is answered 200 with the job as it is now, and no attempt is spent on it
    assert [a.status_code for a in answers] == [200] * 4, [a.get_data(as_text=True) for a in answers]
    assert all(a.get_json()["attempts"] == 2 for a in answers)
    time.sleep(1.0)
    assert [d.json()["attempt"] for d in deliveries_of(receiver, "/accept", job_id)] == [1, 2]
    # and the running attempt still completes with its own token
    done = client.post(f"/v1/jobs/{job_id}/complete", json={"result": 2}, headers=_bearer(second))
    assert done.status_code == 200 and done.get_json()["state"] == "succeeded"
    assert done.get_json()["attempts"] == 2


def test_two_completions_sent_at_once_record_one_outcome_and_both_are_answered(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a running 202 job
    register(client, "acme", "hooks.twins", url=receiver.url("/accept"), timeoutSeconds=30, maxRetries=0)
    job_id = submit(client, "acme", "hooks.twins")
    token = _token_of(receiver, job_id, 1)
    # when the receiver sends its completion eight times at once (a client retrying on a timeout)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: client.post(f"/v1/jobs/{job_id}/complete", json={"result": "ok"}, headers=_bearer(token)),
                range(8),
            )
        )
    # then every call is answered 200 with the succeeded job, which ran one attempt
    assert [a.status_code for a in answers] == [200] * 8, [a.get_data(as_text=True) for a in answers]
    assert {(a.get_json()["state"], a.get_json()["attempts"]) for a in answers} == {("succeeded", 1)}


@pytest.mark.timeout(180)
def test_a_tenants_many_lapsed_202_leases_do_not_go_ahead_of_another_tenants_job(
    http_settings: Settings, redis: Redis, receiver: Receiver, tmp_path: Path
) -> None:
    # given one worker delivering one at a time, on a queue of its own
    settings = replace(http_settings, default_queue="http-lapse-fair")
    app = _app_with_env(settings, _http_env("127.0.0.1/32,http", ""))
    client = app.test_client()
    register(client, "acme", "hooks.lapse-many", url=receiver.url("/accept-once"), timeoutSeconds=30, maxRetries=2)
    register(client, "globex", "hooks.next", url=receiver.url("/ok"))
    worker = WorkerProcess(
        _worker_env(settings, tmp_path),
        tmp_path / "worker.log",
        queues=("http-lapse-fair",),
        pool="threads",
        concurrency=1,
    )
    worker.start().wait_ready(redis, DIAG_TYPES)
    try:
        # and 30 of acme's long jobs at priority 9, each answered 202 and never reported: their leases lapse
        acme = [submit(client, "acme", "hooks.lapse-many", options={"priority": 9}) for _ in range(30)]
        assert wait_for(lambda: all(deliveries_of(receiver, "/accept-once", j) for j in acme), timeout=60)
        tokens = {j: deliveries_of(receiver, "/accept-once", j)[0].json()["attemptToken"] for j in acme}
        assert wait_for(lambda: all(redis.hget(keys.job(j), "owner") == "http-202" for j in acme), timeout=30)
        for j, token in tokens.items():  # so that all their leases lapse at once, 2 s from now
            beat = client.post(f"/v1/jobs/{j}/heartbeat", json={"extendSeconds": 2}, headers=_bearer(token))
            assert beat.status_code == 200, beat.get_data(as_text=True)

        # when the sweep has recovered them all (their next attempts take 0.2 s each)
        def recovered(job_id: str) -> bool:  # its claim of the next attempt clears the mark
            mark, attempts = redis.hmget(keys.job(job_id), ["recoveries", "attempts"])
            return mark is not None or int(attempts or 0) >= 2

        assert wait_for(lambda: all(recovered(j) for j in acme), timeout=60)
        # (and none of them parked, on its way back to acme's turns)
        assert wait_for(lambda: all(redis.zscore(keys.PARKED_UNTIL, j) is None for j in acme), timeout=10)
        submitted = time.time()
        job_id = submit(client, "globex", "hooks.next")
        doc = wait_for_state(client, "globex", job_id, {"succeeded", "dead"}, timeout=60)
        assert doc["state"] == "succeeded", doc
        # then globex's job was delivered within a few of acme's recovered ones, not behind them all
        started = deliveries_of(receiver, "/ok", job_id)[0].at
        ahead = [r for r in receiver.state.to("/accept-once") if submitted <= r.at < started]
        assert len(ahead) <= 3, f"{len(ahead)} of acme's recovered deliveries went ahead of globex's job"
        # and every one of acme's jobs still succeeds, on its second attempt
        for j in acme:
            done = wait_for_state(client, "acme", j, {"succeeded", "dead"}, timeout=60)
            assert (done["state"], done["attempts"]) == ("succeeded", 2), done
    finally:
        worker.stop()


def test_a_lapsed_202_lease_is_retried_and_the_old_token_is_refused(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    # given a 202 receiver that never heartbeats, with a one-second lease and one retry
    register(client, "acme", "hooks.lapse", url=receiver.url("/accept"), timeoutSeconds=1, maxRetries=1)
    job_id = submit(client, "acme", "hooks.lapse")
    old = _token_of(receiver, job_id, 1)
    # when the lease lapses, then the job is delivered again as attempt 2, like a crash
    new = _token_of(receiver, job_id, 2)
    assert [d.json()["attempt"] for d in deliveries_of(receiver, "/accept", job_id)] == [1, 2]
    # and the first attempt's token is refused
    assert client.post(f"/v1/jobs/{job_id}/heartbeat", headers=_bearer(old)).status_code == 401
    refused = client.post(f"/v1/jobs/{job_id}/complete", json={"result": "late"}, headers=_bearer(old))
    assert refused.status_code == 401
    # when the second attempt reports a permanent error, then the job is dead with it
    failed = client.post(
        f"/v1/jobs/{job_id}/complete", json={"error": "bad input", "retryable": False}, headers=_bearer(new)
    )
    assert failed.status_code == 200, failed.get_data(as_text=True)
    doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
    assert doc["state"] == "dead" and doc["attempts"] == 2 and doc["error"]["message"] == "bad input"


def _backlog_drift(redis: Redis, tenant: str) -> int:
    """How far ``tenant``'s backlog count is off its non-final records, read at one instant.
    Measured before and after: other tests on this shared Redis may leave it off (records they
    deleted by hand), and a job of another test ending meanwhile moves both sides alike."""
    counted, actual = backlog_mismatches(redis).get(tenant, (0, 0))
    return counted - actual


@pytest.mark.timeout(120)
def test_a_202_job_asked_to_cancel_whose_lease_lapses_ends_cancelled_through_its_ready_set(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess, redis: Redis
) -> None:
    # given a 202 receiver that never reports, a two-second lease and retries left
    register(client, "acme", "hooks.lapse-cancel", url=receiver.url("/accept"), timeoutSeconds=2, maxRetries=3)
    drift = _backlog_drift(redis, "acme")
    job_id = submit(client, "acme", "hooks.lapse-cancel")
    _token_of(receiver, job_id, 1)
    assert wait_for(lambda: redis.hget(keys.job(job_id), "owner") == "http-202", timeout=30)
    # and its tenant asks to cancel it while it runs (cooperative: cancelRequested)
    asked = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
    assert asked.status_code == 200 and asked.get_json()["cancelRequested"] is True, asked.get_data(as_text=True)
    # when its lease lapses (the sweep parks it, the tick puts it in its tenant's ready set)
    doc = wait_for_state(client, "acme", job_id, {"cancelled", "succeeded", "dead"}, timeout=60)
    # then it ends cancelled after its one attempt, never delivered again, nothing left waiting
    assert (doc["state"], doc["attempts"]) == ("cancelled", 1), doc
    time.sleep(2)
    assert len(deliveries_of(receiver, "/accept", job_id)) == 1
    assert redis.zscore(keys.PARKED_UNTIL, job_id) is None
    assert redis.zscore(keys.ready(QUEUE, "acme"), job_id) is None
    assert redis.hget(keys.job(job_id), "message") is None
    assert _backlog_drift(redis, "acme") == drift  # its own count is exact


@pytest.mark.timeout(120)
def test_a_202_job_without_retries_whose_lease_lapses_is_dead_after_one_attempt(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess, redis: Redis
) -> None:
    # given a 202 receiver that never reports, a two-second lease and no retry
    register(client, "acme", "hooks.lapse-once", url=receiver.url("/accept"), timeoutSeconds=2, maxRetries=0)
    drift = _backlog_drift(redis, "acme")
    job_id = submit(client, "acme", "hooks.lapse-once")
    _token_of(receiver, job_id, 1)
    # when its lease lapses and the sweep recovers it through its tenant's ready set
    doc = wait_for_state(client, "acme", job_id, {"cancelled", "succeeded", "dead"}, timeout=60)
    # then it is dead after its one attempt (maxRetries + 1), delivered once
    assert (doc["state"], doc["attempts"]) == ("dead", 1), doc
    time.sleep(2)
    assert len(deliveries_of(receiver, "/accept", job_id)) == 1
    assert redis.zscore(keys.ready(QUEUE, "acme"), job_id) is None
    assert _backlog_drift(redis, "acme") == drift  # its own count is exact


def test_a_202_job_reporting_a_retryable_error_is_delivered_again(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess
) -> None:
    register(client, "acme", "hooks.again", url=receiver.url("/accept"), timeoutSeconds=30, maxRetries=1, backoff=0)
    job_id = submit(client, "acme", "hooks.again")
    first = _token_of(receiver, job_id, 1)
    answer = client.post(f"/v1/jobs/{job_id}/complete", json={"error": {"code": 7}}, headers=_bearer(first))
    assert answer.status_code == 200 and answer.get_json()["state"] == "retrying"
    second = _token_of(receiver, job_id, 2)
    both = client.post(f"/v1/jobs/{job_id}/complete", json={"result": None, "error": 1}, headers=_bearer(second))
    assert both.status_code == 422  # exactly one of result and error
    done = client.post(f"/v1/jobs/{job_id}/complete", json={"result": None}, headers=_bearer(second))
    assert done.status_code == 200 and done.get_json()["state"] == "succeeded"


def test_a_202_jobs_retry_waits_parked_in_redis_not_as_an_eta_message(
    client: FlaskClient, receiver: Receiver, http_worker: WorkerProcess, redis: Redis
) -> None:
    # given a 202 receiver allowed one retry, up to ten minutes after a failure (full jitter)
    register(client, "acme", "hooks.later", url=receiver.url("/accept"), timeoutSeconds=30, maxRetries=1, backoff=600)
    job_id = submit(client, "acme", "hooks.later")
    first = _token_of(receiver, job_id, 1)
    # when its first attempt reports a retryable error
    reported = time.time()
    answer = client.post(f"/v1/jobs/{job_id}/complete", json={"error": "busy"}, headers=_bearer(first))
    assert answer.status_code == 200 and answer.get_json()["state"] == "retrying"
    # then its next attempt waits parked in Redis until due, as a worker's retry does (no ETA message)
    due = redis.zscore(keys.PARKED_UNTIL, job_id)
    assert due is not None and due == pytest.approx(float(str(redis.hget(keys.job(job_id), "dueAt"))), abs=1.0)
    assert due > reported
    # when its backoff has passed (made to pass now)
    now = time.time()
    redis.hset(keys.job(job_id), "dueAt", repr(now))
    redis.zadd(keys.PARKED_UNTIL, {job_id: now}, xx=True)
    # then it is released and delivered again, as attempt 2
    second = _token_of(receiver, job_id, 2)
    assert redis.zscore(keys.PARKED_UNTIL, job_id) is None
    done = client.post(f"/v1/jobs/{job_id}/complete", json={"result": 2}, headers=_bearer(second))
    assert done.status_code == 200 and done.get_json()["state"] == "succeeded"


def test_a_tenants_max_running_holds_for_its_http_jobtypes_too(
    http_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # given acme may run one job at a time (max_running = 1) and has an HTTP handler with no
    # limit of its own, served by a worker of 8 threads on a queue of this test's own
    # (found in review: a tenant's HTTP jobTypes did not count towards its max_running)
    path = write_tenants_file(tmp_path / "tenants.toml", tenant_settings={"acme": "max_running = 1"})
    local = replace(http_settings, tenants_file=path, default_queue="http-running-cap")
    api = _app_with_env(local, _http_env("127.0.0.1/32,http", f"rebind.test={PUBLIC_ADDRESS}"))
    client = api.test_client()
    worker = WorkerProcess(
        _worker_env(local, tmp_path), tmp_path / "w.log", queues=("http-running-cap",), pool="threads", concurrency=8
    ).start()
    try:
        worker.wait_ready(redis, DIAG_TYPES)
        with Receiver("127.0.0.1") as own:
            assert register(client, "acme", "hooks.capped", url=own.url("/slow")).status_code == 201
            # when acme submits 4 jobs of it, each taking 0.3 s at the receiver
            jobs = [submit(client, "acme", "hooks.capped", {"seconds": 0.3}) for _ in range(4)]
            docs = [wait_for_state(client, "acme", j, {"succeeded", "dead"}, timeout=60) for j in jobs]
            # then each ran once, and never two at once: the cap counts every jobType of the tenant
            assert {(d["state"], d["attempts"]) for d in docs} == {("succeeded", 1)}
            assert own.state.most_in_flight == 1
        assert redis.zcard(keys.tenant_running("acme")) == 0
    finally:
        worker.stop()
        client.delete("/v1/handlers/hooks.capped", headers=auth("acme"))


def test_pulse_worker_with_a_threads_pool_lets_deliveries_in_flight_finish_on_sigterm(
    http_settings: Settings, redis: Redis, receiver: Receiver, tmp_path: Path
) -> None:
    # given `pulse worker --pool threads --concurrency 8 --queues http-term`, as the docs say
    settings = replace(http_settings, default_queue="http-term")
    app = _app_with_env(settings, _http_env("127.0.0.1/32,http", ""))
    client = app.test_client()
    register(client, "acme", "hooks.term", url=receiver.url("/slow"), timeoutSeconds=30)
    process = WorkerProcess(_worker_env(settings, tmp_path), tmp_path / "worker.log", queues=("http-term",))
    process.command = [
        sys.executable, "-m", "pulse_cli.cli", "worker", "--pool", "threads", "--concurrency", "8",
        "--queues", "http-term",
    ]  # fmt: skip
    process.start().wait_ready(redis, DIAG_TYPES)
    jobs = [submit(client, "acme", "hooks.term", {"seconds": 3}) for _ in range(3)]
    wait_for(lambda: all(deliveries_of(receiver, "/slow", j) for j in jobs), timeout=30)
    # when it gets SIGTERM while the three deliveries are in flight
    process.signal(signal.SIGTERM)
    assert process.process is not None
    code = process.process.wait(60)
    process.stop()
    # then it waited for them: each job succeeded, delivered once, and the worker exited cleanly
    assert code == 0, process.log()[-2000:]
    for job_id in jobs:
        assert wait_for_state(client, "acme", job_id, {"succeeded", "dead"})["state"] == "succeeded"
        assert len(deliveries_of(receiver, "/slow", job_id)) == 1


def test_a_missing_secret_key_stops_the_worker_once_a_handler_exists(
    client: FlaskClient, http_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    # given a registration exists
    assert register(client, "acme", "hooks.keyed.worker", url=receiver.url("/ok")).status_code in (200, 201)
    # when a worker starts without PULSE_SECRET_KEY
    env = _worker_env(http_settings, tmp_path)
    del env["PULSE_SECRET_KEY"]
    process = WorkerProcess(env, tmp_path / "worker.log", queues=("http-nokey",)).start()
    assert process.process is not None
    try:
        code = process.process.wait(60)
    finally:
        process.stop()
    # then it stops, naming the variable
    assert code != 0
    assert "PULSE_SECRET_KEY is not set" in process.log()


# --- the guard's rules and the operator's settings, on their own ------------------------


@pytest.mark.parametrize(
    "address",
    ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.1.1", "fe80::1", "169.254.169.254", "240.0.0.1", "::"],
)
def test_the_guard_refuses_every_non_public_address(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), HttpHandlerSettings()) is not None
    assert refusal(ipaddress.ip_address("93.184.216.34"), HttpHandlerSettings()) is None


def test_an_allowed_network_passes_and_a_bad_setting_names_itself() -> None:
    allowed = HttpHandlerSettings.from_env({"PULSE_HTTP_HANDLER_ALLOW": "10.20.0.0/16"})
    assert refusal(ipaddress.ip_address("10.20.3.4"), allowed) is None
    assert refusal(ipaddress.ip_address("10.21.3.4"), allowed) is not None
    with pytest.raises(ConfigError, match="PULSE_HTTP_HANDLER_ALLOW"):
        HttpHandlerSettings.from_env({"PULSE_HTTP_HANDLER_ALLOW": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="PULSE_SECRET_KEY"):
        HttpHandlerSettings.from_env({"PULSE_SECRET_KEY": "not-a-fernet-key"})


def test_a_completion_sent_before_the_worker_recorded_the_202_waits_for_it(
    client: FlaskClient, redis: Redis, api: Flask
) -> None:
    # given an HTTP job's attempt 1 running under its delivering worker, its token issued,
    # and the receiver's 202 not yet recorded (the worker's next step after the answer)
    from concurrent.futures import ThreadPoolExecutor

    from pulse_core.http_handlers.attempts import AttemptTokens
    from pulse_core.jobs import Job, new_job_id, utc_now
    from pulse_core.store.job_store import JobStore

    store = JobStore(redis)
    job = Job(
        job_id=new_job_id(), tenant_id="acme", job_type="hooks.early", queue="t-early-callback", created_at=utc_now()
    )
    store.create(job, watch_at=time.time() + 60)
    running = store.claim(job.job_id, owner="w1/t1", lease_seconds=60, fallback_max_retries=0, lost_error={}).job
    assert running is not None
    token, stored = AttemptTokens.new(running)
    redis.set(keys.http_attempt_token(job.job_id), stored, ex=600)
    # when the receiver completes it at once, and the worker records the 202 0.5 s later
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        answer = pool.submit(
            lambda: api.test_client().post(
                f"/v1/jobs/{job.job_id}/complete", json={"result": {"ok": 1}}, headers=_bearer(token)
            )
        )
        time.sleep(0.5)
        assert AttemptTokens(redis).hand_off(running, 60)
        done = answer.result(timeout=10)
        took = time.monotonic() - started
    # then the completion waited for the hand-off and finished the job, instead of calling it over
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.get_json()["state"] == "succeeded" and took >= 0.5
    doc = client.get(f"/v1/jobs/{job.job_id}", headers=auth("acme")).get_json()
    assert (doc["state"], doc["result"]) == ("succeeded", {"ok": 1})


def _handed_off(store: Any, redis: Redis, tenant: str, job_type: str, max_retries: int = 0) -> tuple[str, str]:
    """A job of ``tenant`` whose attempt 1 (its last, unless ``max_retries``) a receiver answered
    202: running, handed off, its token issued. Returns (job id, token)."""
    from pulse_core.http_handlers.attempts import AttemptTokens
    from pulse_core.jobs import Job, new_job_id, utc_now

    job = Job(
        job_id=new_job_id(),
        tenant_id=tenant,
        job_type=job_type,
        queue="t-complete-dead",
        created_at=utc_now(),
        max_retries=max_retries,
    )
    store.create(job, watch_at=time.time() + 60)
    running = store.claim(job.job_id, owner="w1/t1", lease_seconds=60, fallback_max_retries=0, lost_error={}).job
    assert running is not None
    token, stored = AttemptTokens.new(running)
    redis.set(keys.http_attempt_token(job.job_id), stored, ex=600)
    assert AttemptTokens(redis).hand_off(running, 60)
    return job.job_id, token


def test_a_202_job_completed_dead_keeps_its_tenants_dead_letter_bounds(
    http_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    from pulse_core.store.job_store import JobStore
    from tests.support import write_tenants_file

    # given a tenant that keeps at most one dead letter (its tenants file), and an API reading it
    tenants = write_tenants_file(
        tmp_path / "tenants.toml",
        keys={"deadcap": "deadcap-secret-key"},
        tenant_settings={"deadcap": "max_dead_letters = 1"},
    )
    api = _app_with_env(replace(http_settings, tenants_file=tenants), _http_env("127.0.0.1/32,http", ""))
    client = api.test_client()
    store = JobStore(redis)
    tenant_auth = {"Authorization": "Bearer deadcap-secret-key"}
    dead = keys.tenant_dead_letters("deadcap")
    redis.delete(dead)
    # when two of its long HTTP jobs, one after the other, report a permanent error on their last attempt
    ids: list[str] = []
    try:
        for _ in range(2):
            job_id, token = _handed_off(store, redis, "deadcap", "hooks.capped")
            ids.append(job_id)
            failed = client.post(
                f"/v1/jobs/{job_id}/complete", json={"error": "bad input", "retryable": False}, headers=_bearer(token)
            )
            assert failed.status_code == 200 and failed.get_json()["state"] == "dead", failed.get_data(as_text=True)
        # then it keeps one dead letter, the newest, as a dead-letter task would have left it
        listed = client.get("/v1/dead-letters", headers=tenant_auth).get_json()["items"]
        assert [item["jobId"] for item in listed] == [ids[1]]
        assert redis.zrange(dead, 0, -1) == [ids[1]]
        # and the older one's record now expires with the usual retention
        assert redis.ttl(keys.job(ids[0])) > 0
    finally:
        redis.delete(dead, keys.tenant_counts("deadcap"), keys.tenant_jobs("deadcap"), *map(keys.job, ids))
        if ids:
            redis.zrem(keys.WATCH, *ids)


@pytest.mark.parametrize("retryable", [True, False])
def test_a_202_job_whose_cancel_was_asked_ends_cancelled_when_it_reports_an_error(
    client: FlaskClient, redis: Redis, retryable: bool
) -> None:
    from pulse_core.store.job_store import JobStore

    # given a long HTTP job with attempts left, its receiver's 202 recorded
    job_id, token = _handed_off(JobStore(redis), redis, "acme", "hooks.cancelled", max_retries=3)
    try:
        # and its tenant asks to cancel it while it runs (cooperative: cancelRequested)
        asked = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
        assert asked.status_code == 200 and asked.get_json()["cancelRequested"] is True, asked.get_data(as_text=True)
        # when its receiver then reports that it failed
        failed = client.post(
            f"/v1/jobs/{job_id}/complete", json={"error": "stopped", "retryable": retryable}, headers=_bearer(token)
        )
        # then the job is cancelled, as a worker's failed attempt after a cancel is: never
        # delivered again, nor dead-lettered
        assert failed.status_code == 200, failed.get_data(as_text=True)
        doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
        assert doc["state"] == "cancelled" and doc["error"]["message"] == "stopped"
        assert redis.zscore(keys.PARKED_UNTIL, job_id) is None
        assert redis.hget(keys.PARKED_MESSAGES, job_id) is None
        assert redis.zscore(keys.tenant_dead_letters("acme"), job_id) is None
    finally:
        redis.zrem(keys.WATCH, job_id)
        redis.zrem(keys.PARKED_UNTIL, job_id)
        redis.hdel(keys.PARKED_MESSAGES, job_id)


def test_a_cancel_asked_while_a_202_jobs_failure_is_being_recorded_is_not_retried(
    client: FlaskClient, http_settings: Settings, redis: Redis, redis_server: EmbeddedRedis
) -> None:
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from pulse_core.lua_scripts import source
    from pulse_core.store.job_store import JobStore
    from tests.faults import RedisProxy

    # given a long HTTP job with attempts left, its receiver's 202 recorded, and an API whose
    # link to Redis is slow one time: the script that records a failed attempt as a retry
    # reaches Redis 1.5 s late
    job_id, token = _handed_off(JobStore(redis), redis, "acme", "hooks.racing", max_retries=3)
    proxy = RedisProxy(redis_server.port)
    through = f"{proxy.url.rsplit('/', 1)[0]}/{http_settings.redis_url.rsplit('/', 1)[1]}"
    slow = _app_with_env(
        replace(http_settings, redis_url=through, broker_url=through), _http_env("127.0.0.1/32,http", "")
    )
    proxy.delay(hashlib.sha1(source("pulse_core.store", "schedule_retry").encode()).hexdigest(), 1.5)
    try:
        with ThreadPoolExecutor(1) as pool:
            # when its receiver reports a retryable error through that API
            answer = pool.submit(
                lambda: slow.test_client().post(
                    f"/v1/jobs/{job_id}/complete", json={"error": "stopped"}, headers=_bearer(token)
                )
            )
            # and its tenant asks to cancel it while that report is on its way to Redis
            assert wait_for(lambda: proxy.delays_left() == 0, timeout=10)
            asked = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("acme"))
            assert asked.status_code == 200 and asked.get_json()["cancelRequested"] is True
            done = answer.result(timeout=30)
        # then the job ends cancelled, as the cancel answered it would: never delivered again
        assert done.status_code == 200, done.get_data(as_text=True)
        doc = client.get(f"/v1/jobs/{job_id}", headers=auth("acme")).get_json()
        assert doc["state"] == "cancelled"
        assert redis.zscore(keys.PARKED_UNTIL, job_id) is None
        assert redis.hget(keys.PARKED_MESSAGES, job_id) is None
    finally:
        proxy.close()
        redis.zrem(keys.WATCH, job_id)
        redis.zrem(keys.PARKED_UNTIL, job_id)
        redis.hdel(keys.PARKED_MESSAGES, job_id)
