"""Settings and the tenants file: a bad value stops start-up with a message naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.errors import ConfigError, DuplicateHandler
from pulse_core.handlers import HandlerRegistry
from pulse_core.settings import DOC_GROUPS, Settings, declarations, docs_table
from pulse_core.tenants import TenantsConfig, hash_api_key
from tests.support import ROOT, child_env

DIGEST = hash_api_key("k1")


def test_settings_default_the_broker_to_the_redis_url() -> None:
    settings = Settings.from_env({"PULSE_REDIS_URL": "redis://h:1/2"})
    assert settings.broker_url == "redis://h:1/2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PULSE_REDIS_URL": "http://x"}, "PULSE_REDIS_URL"),
        ({"PULSE_BROKER_URL": "kafka://x"}, "PULSE_BROKER_URL"),
        ({"PULSE_HANDLER_MODULES": "ok.mod, not a module"}, "PULSE_HANDLER_MODULES"),
        ({"PULSE_RESULT_MAX_BYTES": "lots"}, "PULSE_RESULT_MAX_BYTES"),
        ({"PULSE_RESULT_MAX_BYTES": "-1"}, "PULSE_RESULT_MAX_BYTES"),
        ({"PULSE_IDEMPOTENCY_TTL_SECONDS": "a day"}, "PULSE_IDEMPOTENCY_TTL_SECONDS"),
        ({"PULSE_BATCH_MAX_JOBS": "0"}, "PULSE_BATCH_MAX_JOBS"),
        ({"PULSE_BATCH_MAX_BYTES": "-5"}, "PULSE_BATCH_MAX_BYTES"),
        ({"PULSE_LEASE_SECONDS": "soon"}, "PULSE_LEASE_SECONDS"),
        ({"PULSE_SOFT_SHUTDOWN_SECONDS": "-1"}, "PULSE_SOFT_SHUTDOWN_SECONDS"),
        ({"PULSE_MAX_RETRIES_CAP": "0"}, "PULSE_MAX_RETRIES_CAP"),
        ({"PULSE_VISIBILITY_TIMEOUT_SECONDS": "1h"}, "PULSE_VISIBILITY_TIMEOUT_SECONDS"),
        ({"PULSE_METRICS": "maybe"}, "PULSE_METRICS"),
        ({"PULSE_LOG_FORMAT": "xml"}, "PULSE_LOG_FORMAT"),
        ({"PULSE_WORKER_METRICS_PORT": "70000"}, "PULSE_WORKER_METRICS_PORT"),
        ({"PULSE_WORKER_METRICS_HOST": "a host"}, "PULSE_WORKER_METRICS_HOST"),
        ({"PULSE_FLOWER_BASIC_AUTH": "no-password"}, "PULSE_FLOWER_BASIC_AUTH"),
        (
            {"PULSE_REDIS_ULR": "redis://h:1/0"},
            r"PULSE_REDIS_ULR is not a Pulse setting \(did you mean PULSE_REDIS_URL\?\)",
        ),
        ({"PULSE_WHATEVER": "1"}, "PULSE_WHATEVER is not a Pulse setting"),
        # too large to mean anything: each would fail later, in a request or a worker's loop
        ({"PULSE_IDEMPOTENCY_TTL_SECONDS": "99999999999999999999"}, "PULSE_IDEMPOTENCY_TTL_SECONDS.*at most"),
        ({"PULSE_MAX_DELAY_SECONDS": "99999999999999999999"}, "PULSE_MAX_DELAY_SECONDS.*at most"),
        ({"PULSE_JOB_TYPE_TTL_SECONDS": "999999999999999999"}, "PULSE_JOB_TYPE_TTL_SECONDS.*at most"),
        ({"PULSE_LEASE_SECONDS": "1e15"}, "PULSE_LEASE_SECONDS.*at most"),
        ({"PULSE_SWEEP_INTERVAL_SECONDS": "1e15"}, "PULSE_SWEEP_INTERVAL_SECONDS.*at most"),
        ({"PULSE_SOFT_SHUTDOWN_SECONDS": "1e15"}, "PULSE_SOFT_SHUTDOWN_SECONDS.*at most"),
        ({"PULSE_RESULT_MAX_BYTES": str(2**40)}, "PULSE_RESULT_MAX_BYTES.*at most"),
        ({"PULSE_MAX_RETRIES_CAP": str(10**20)}, "PULSE_MAX_RETRIES_CAP.*at most"),
        # a Redis URL redis-py cannot use, or would read otherwise than it says
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:notaport/0"}, "PULSE_REDIS_URL.*port"),
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:99999/0"}, "PULSE_REDIS_URL.*port"),
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:6379/abc"}, "PULSE_REDIS_URL.*database"),
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:6379/0?foo=bar"}, "PULSE_REDIS_URL.*foo"),
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:6379/0?socket_timeout=abc"}, "PULSE_REDIS_URL.*socket_timeout"),
        ({"PULSE_BROKER_URL": "redis://127.0.0.1:99999/0"}, "PULSE_BROKER_URL.*port"),
    ],
)
def test_a_bad_setting_names_itself(env: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PULSE_REDIS_URL": "http://pulse:s3cret-pw@x"}, "PULSE_REDIS_URL='http://pulse:\\*\\*\\*@x'"),
        ({"PULSE_BROKER_URL": "kafka://:s3cret-pw@x:9092"}, "PULSE_BROKER_URL='kafka://:\\*\\*\\*@x:9092'"),
        ({"PULSE_REDIS_URL": "redis://:s3cret-pw@127.0.0.1:99999/0"}, "PULSE_REDIS_URL.*port"),
        ({"PULSE_REDIS_URL": "redis://u:s3cret-pw@127.0.0.1:6379/abc"}, "PULSE_REDIS_URL.*database"),
        ({"PULSE_REDIS_URL": "redis://u:s3cret-pw@127.0.0.1:6379/0?foo=bar"}, "PULSE_REDIS_URL.*foo"),
    ],
)
def test_a_bad_url_setting_is_named_without_its_password(env: dict, named: str) -> None:
    # given a URL setting with a password that is wrong in another way
    # when the settings are read
    with pytest.raises(ConfigError, match=named) as refused:
        Settings.from_env(env)
    # then the refusal names it, and does not print the password
    assert "s3cret-pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "enabled"),
    [("off", False), ("OFF", False), ("false", False), ("0", False), ("no", False), ("on", True), ("1", True)],
)
def test_pulse_metrics_is_read(text: str, enabled: bool) -> None:
    assert Settings.from_env({"PULSE_METRICS": text}).metrics_enabled is enabled
    assert Settings.from_env({}).metrics_enabled is True


def test_settings_survive_a_trip_through_the_environment(tmp_path: Path) -> None:
    # given settings that differ from every default
    changed = Settings(
        redis_url="redis://h:1/2",
        broker_url="amqp://guest@b:5672//",
        tenants_file=tmp_path / "t.toml",
        handler_modules=("a.b", "c"),
        default_queue="q1",
        lease_seconds=2.5,
        metrics_enabled=False,
        worker_metrics_port=9100,
        flower_basic_auth="ops:pw",
        log_format="text",
    )
    # when written as variables (as tests and child processes do) and read back, then nothing changed
    env = changed.to_env()
    assert all(name.startswith("PULSE_") for name in env)
    assert Settings.from_env(env) == changed
    assert "ops:pw" not in repr(changed)


def test_every_setting_is_declared_once_and_documented_exactly_as_declared() -> None:
    names = [decl.env for _, decl in declarations()]
    assert len(names) == len(set(names)) and all(name.startswith("PULSE_") for name in names)
    for group, doc in DOC_GROUPS.items():
        text = (ROOT / doc).read_text()
        assert docs_table(group) in text, f"{doc}: regenerate its table with `python -m pulse_core.settings {group}`"


def test_the_docs_and_code_name_no_pulse_variable_that_is_not_declared() -> None:
    declared = {decl.env for _, decl in declarations()}
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    files += [
        p for d in ("pulse_core", "pulse_api", "pulse_worker", "pulse_cli", "bench") for p in (ROOT / d).rglob("*.py")
    ]
    named = {(p.name, m) for p in files for m in re.findall(r"\bPULSE_[A-Z][A-Z0-9_]*[A-Z0-9]\b", p.read_text())}
    assert {(f, m) for f, m in named if m not in declared} == set()


@pytest.mark.parametrize("command", ["api", "worker", "flower"])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "PULSE_REDIS_ULR",
            "redis://127.0.0.1:1/0",
            "PULSE_REDIS_ULR is not a Pulse setting (did you mean PULSE_REDIS_URL?)",
        ),
        ("PULSE_METRICS", "maybe", "PULSE_METRICS='maybe': use on or off"),
    ],
)
def test_pulse_cli_refuses_an_undeclared_variable_or_a_bad_switch(
    command: str, variable: str, value: str, message: str, tenants_file: Path
) -> None:
    env = child_env({"PULSE_TENANTS_FILE": str(tenants_file), variable: value})
    out = subprocess.run(
        [sys.executable, "-m", "pulse_cli.cli", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_the_worker_app_refuses_an_undeclared_variable_without_pulse_cli(tenants_file: Path) -> None:
    # given plain Celery pointed at the worker app, with a typo among the variables
    env = child_env({"PULSE_TENANTS_FILE": str(tenants_file), "PULSE_SOFT_SHUTDOWN_SECOND": "5"})
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pulse_worker.app", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "PULSE_SOFT_SHUTDOWN_SECOND is not a Pulse setting (did you mean PULSE_SOFT_SHUTDOWN_SECONDS?)" in out.stderr


def test_a_handler_module_that_fails_on_import_stops_the_worker(
    tmp_path: Path, tenants_file: Path, redis_server: EmbeddedRedis
) -> None:
    # given a handler module that raises at import (not an ImportError: a bug, a missing setting)
    (tmp_path / "broken_handlers.py").write_text('raise RuntimeError("no API_TOKEN in the environment")\n')
    env = child_env(
        {
            "PULSE_TENANTS_FILE": str(tenants_file),
            "PULSE_HANDLER_MODULES": "broken_handlers",
            "PULSE_REDIS_URL": redis_server.url,
        }
    )
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    # when a worker starts
    out = subprocess.run(
        [sys.executable, "-m", "pulse_cli.cli", "worker", "--pool", "threads", "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it stops (it ran on with no handlers, its start-up checks skipped), naming the module
    assert out.returncode != 0
    assert "PULSE_HANDLER_MODULES: cannot import 'broken_handlers': RuntimeError: no API_TOKEN" in out.stderr


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[tenants.acme\n", "not valid TOML"),
        ("[tenants.acme]\n", "api_key_sha256"),
        ('[tenants.acme]\napi_key_sha256 = ["abc"]\n', "64 lowercase hex"),
        (f'[tenants.Bad]\napi_key_sha256 = ["{DIGEST}"]\n', "tenants.Bad"),
        (f'[defaults]\nrate_limit = "lots"\n[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n', "rate_limit"),
        (
            f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n[tenants.b]\napi_key_sha256 = ["{DIGEST}"]\n',
            "already belongs to a",
        ),
        ("[tenant.typo]\n", "unknown section"),
        (f'[defaults]\nmax_pending = 0\n[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n', r"\[defaults\] max_pending"),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nmax_pending = "10"\n', r"\[tenants.a\] max_pending"),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nmax_payload_bytes = true\n', r"\[tenants.a\] max_payload_bytes"),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nrate_limit = ""\n', "rate_limit"),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nrate_limit = "0/second"\n', "rate_limit.*lets nothing through"),
        # "5 per 0 minutes" was read as 5 a minute
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nrate_limit = "5/0 minutes"\n', r"rate_limit.*window of 0"),
        ('[job_types."x.y"]\nrate_limit = "10/second;5/0 hour"\n', r'\[job_types."x.y"\] rate_limit.*window of 0'),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nmax_pendng = 5\n', "max_pendng"),
        (
            f'[defaults]\nmax_stored_bytes = 0\n[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n',
            r"\[defaults\] max_stored_bytes=0 must be between 1 and",
        ),
        (f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\nmax_stored_bytes = "1GB"\n', r"\[tenants.a\] max_stored_bytes"),
        # a jobType no handler can have: its rule would never apply, silently
        ('[job_types."email send"]\nqueue = "q"\n', r'\[job_types."email send"\]: .*not a valid jobType'),
        (
            f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n[tenants.a.job_types.""]\nmax_concurrency = 2\n',
            r'\[tenants.a.job_types.""\]: .*not a valid jobType',
        ),
    ],
)
def test_a_bad_tenants_file_names_the_problem(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        TenantsConfig.load(path)


def test_a_missing_tenants_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TenantsConfig.load(tmp_path / "nope.toml")


def test_keys_are_matched_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[defaults]\nrate_limit = "5/second"\n[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n'
        f'rate_limit = "10/minute;100/hour"\n'
    )
    config = TenantsConfig.load(path)
    tenant = config.authenticate("k1")
    assert tenant is not None and tenant.tenant_id == "a"
    assert tenant.rate_limit == "10/minute;100/hour"
    assert config.authenticate("k2") is None
    assert config.default_rate_limit == "5/second"


def test_keys_are_found_by_digest_among_five_thousand_tenants(tmp_path: Path) -> None:
    # given 5,000 tenants with one key each
    lines = [f'[tenants.t{n}]\napi_key_sha256 = ["{hash_api_key(f"key-{n}")}"]' for n in range(5000)]
    path = tmp_path / "many.toml"
    path.write_text("\n".join(lines) + "\n")
    config = TenantsConfig.load(path)
    # when keys are presented: the first, the last, a stranger, and a stored digest itself
    first, last = config.authenticate("key-0"), config.authenticate("key-4999")
    # then each key finds its own tenant and nothing else finds one
    assert first is not None and first.tenant_id == "t0"
    assert last is not None and last.tenant_id == "t4999"
    assert config.authenticate("key-5000") is None
    assert config.authenticate(hash_api_key("key-7")) is None


def test_tenant_limits_default_and_override(tmp_path: Path) -> None:
    # given defaults for the backlog and payload caps, one tenant overriding both
    path = tmp_path / "t.toml"
    path.write_text(
        "[defaults]\nmax_pending = 50\nmax_payload_bytes = 2048\n"
        f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n'
        f'[tenants.b]\napi_key_sha256 = ["{hash_api_key("k2")}"]\n'
        "max_pending = 7\nmax_payload_bytes = 100\n"
    )
    config = TenantsConfig.load(path)
    a, b = config.tenants["a"], config.tenants["b"]
    assert (a.max_pending, a.max_payload_bytes) == (50, 2048)
    assert (b.max_pending, b.max_payload_bytes) == (7, 100)
    assert [str(item) for item in a.rate_limits] == ["100 per 1 second"]


def test_the_storage_budget_defaults_and_is_overridden(tmp_path: Path) -> None:
    # given a storage budget in [defaults] and one tenant overriding it
    path = tmp_path / "t.toml"
    path.write_text(
        "[defaults]\nmax_stored_bytes = 1000000\n"
        f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n'
        f'[tenants.b]\napi_key_sha256 = ["{hash_api_key("k2")}"]\nmax_stored_bytes = 5000\n'
    )
    config = TenantsConfig.load(path)
    # then each tenant has its budget, and a file without one has the default 256 MiB
    assert (config.tenants["a"].max_stored_bytes, config.tenants["b"].max_stored_bytes) == (1_000_000, 5000)
    path.write_text(f'[tenants.a]\napi_key_sha256 = ["{DIGEST}"]\n')
    assert TenantsConfig.load(path).tenants["a"].max_stored_bytes == 256 * 1024 * 1024


def test_registering_one_job_type_twice_fails_with_both_names() -> None:
    registry = HandlerRegistry()

    @registry.handler("x.y")
    def first(payload, ctx):
        return None

    with pytest.raises(DuplicateHandler, match=r"'x.y' is already registered.*first"):

        @registry.handler("x.y")
        def second(payload, ctx):
            return None


def test_an_invalid_job_type_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid"):
        HandlerRegistry().handler("has space")


@pytest.mark.parametrize("command", ["api", "worker", "flower"])
def test_pulse_cli_refuses_to_start_on_a_bad_setting(command: str) -> None:
    env = child_env({"PULSE_REDIS_URL": "http://wrong", "PULSE_TENANTS_FILE": "x.toml"})
    out = subprocess.run(
        [sys.executable, "-m", "pulse_cli.cli", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "PULSE_REDIS_URL" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PULSE_JOB_TYPE_TTL_SECONDS", "999999999999999999"),
        ("PULSE_IDEMPOTENCY_TTL_SECONDS", "99999999999999999999"),
        ("PULSE_REDIS_URL", "redis://127.0.0.1:99999/0"),
        ("PULSE_REDIS_URL", "redis://127.0.0.1:6379/0?foo=bar"),
    ],
)
def test_pulse_api_stops_at_start_up_on_a_setting_it_could_not_use(variable: str, value: str, tmp_path: Path) -> None:
    # given a setting that parses but that Redis or redis-py would refuse later (a 500 on the
    # first request; a worker crashing in its announcement, leaving the number in Redis)
    env = child_env({"PULSE_TENANTS_FILE": str(tmp_path / "missing.toml"), variable: value})
    # when the API starts
    out = subprocess.run(
        [sys.executable, "-m", "pulse_cli.cli", "api"], env=env, capture_output=True, text=True, timeout=60
    )
    # then it stops at once, with one line naming the setting, before anything else
    assert out.returncode != 0
    assert f"bad setting: {variable}=" in out.stderr
    assert "Traceback" not in out.stderr


def test_pulse_api_refuses_a_missing_tenants_file(tmp_path: Path) -> None:
    env = child_env({"PULSE_TENANTS_FILE": str(tmp_path / "missing.toml")})
    out = subprocess.run(
        [sys.executable, "-m", "pulse_cli.cli", "api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "missing.toml does not exist" in out.stderr


def test_a_bad_retry_policy_names_the_job_type() -> None:
    with pytest.raises(ConfigError, match=r"'x.y': bad retry policy: max_retries"):
        HandlerRegistry().handler("x.y", max_retries=-1)
