"""Pulse's Redis clients pack commands and parse replies with hiredis (through redis-py):
the same bytes as redis-py's own serializer, so Redis sees exactly what it saw before."""

from __future__ import annotations

from typing import Any

import pytest
from redis import DataError, Redis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

COMMANDS: list[tuple[Any, ...]] = [
    ("GET", "pulse:job:1"),
    ("CONFIG GET", "maxmemory-policy"),
    (b"CLIENT SETNAME", b"pulse"),
    ("SET", "k", "é ✓ \U0001f600"),
    ("SET", "k", b"\x00\xff raw"),
    ("SET", "k", memoryview(b"a view")),
    ("ZADD", "watch", 1.5, "a", 0.1 + 0.2, "b", float("inf"), "c"),
    ("HINCRBY", "pending", "t", -3),
    ("SET", "big", "x" * 100_000),
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", 0, 10**30, "", b"", "\n\r$*"),
]


def packer(client: Redis) -> Any:
    """The serializer a connection of ``client`` writes commands with."""
    connection = client.connection_pool.get_connection()
    try:
        return connection._command_packer
    finally:
        client.connection_pool.release(connection)


def redis_py_bytes(args: tuple[Any, ...]) -> bytes:
    serializer = PythonRespSerializer(6000, Encoder("utf-8", "strict", True).encode)
    return b"".join(bytes(chunk) for chunk in serializer.pack(*args))


def test_a_pulse_client_packs_with_hiredis(redis: Redis) -> None:
    # given a client as Pulse builds them (the session's, from pulse_core.redis_client.connect)
    # then its connections write commands with hiredis, not redis-py's pure-Python serializer
    assert isinstance(packer(redis), HiredisRespSerializer)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: str(args[0]))
def test_commands_are_written_as_redis_py_writes_them(redis: Redis, args: tuple[Any, ...]) -> None:
    # given a command with arguments of every type Pulse passes
    # when a Pulse client's serializer writes it
    written = b"".join(bytes(chunk) for chunk in packer(redis).pack(*args))
    # then the bytes are those of redis-py's own serializer
    assert written == redis_py_bytes(args)


def test_what_redis_py_refuses_is_refused(redis: Redis) -> None:
    # given an argument redis-py's encoder refuses (a bool is no Redis value)
    # when a Pulse client's serializer writes it, then it refuses it the same way
    with pytest.raises(DataError):
        packer(redis).pack("SET", "k", True)


def test_a_pulse_client_round_trips_every_type(redis: Redis) -> None:
    # given a client as Pulse builds them
    client = redis
    # when values of each type are written and read back, in a command and in a pipeline
    client.set("pulse-test:packer:s", "é ✓")
    client.hset("pulse-test:packer:h", mapping={"i": 7, "f": 2.5, "b": b"raw"})
    with client.pipeline() as pipe:
        pipe.get("pulse-test:packer:s").hgetall("pulse-test:packer:h").delete("pulse-test:packer:s")
        pipe.delete("pulse-test:packer:h")
        got = pipe.execute()
    # then Redis stored what was sent
    assert got[:2] == ["é ✓", {"i": "7", "f": "2.5", "b": "raw"}]
