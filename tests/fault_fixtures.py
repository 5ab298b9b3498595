"""Fixtures of the modules whose API reaches a private Redis through a proxy that breaks the
link for real (``tests.faults.RedisProxy``): registered by ``tests/conftest.py``.

A module using them names its ``QUEUE`` (the default queue of its settings) and may set
``PRIVATE_SETTINGS``, a dict of further settings (``tests.faults.private_settings``). A module
that declares a fixture of the same name keeps its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.redis_client import connect
from pulse_core.settings import Settings
from tests.faults import RedisProxy, private_settings
from tests.support import write_tenants_file


def _short_name(request: pytest.FixtureRequest) -> str:
    return str(request.module.__name__).rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def private_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis of the module's own, not persisted."""
    server = EmbeddedRedis(tmp_path_factory.mktemp(f"{_short_name(request)}-redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def direct(
    request: pytest.FixtureRequest, private_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings that reach the private Redis directly: the module's ``QUEUE`` and ``PRIVATE_SETTINGS``."""
    tenants = write_tenants_file(tmp_path_factory.mktemp(f"{_short_name(request)}-config") / "tenants.toml")
    extra: dict[str, Any] = getattr(request.module, "PRIVATE_SETTINGS", {})
    return private_settings(private_redis.url, tenants, default_queue=request.module.QUEUE, **extra)


@pytest.fixture(scope="module")
def store(direct: Settings) -> Redis:
    """A client of the private Redis, not through the proxy (what the test sets up and reads)."""
    return connect(direct.redis_url)


@pytest.fixture(scope="module")
def proxy(private_redis: EmbeddedRedis) -> Iterator[RedisProxy]:
    """The link the API takes to the private Redis, for the test to break."""
    link = RedisProxy(private_redis.port)
    yield link
    link.close()
