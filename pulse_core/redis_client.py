"""Redis clients, built from a URL and passed in explicitly (no hidden globals)."""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from pulse_core.errors import ConfigError


def connect(url: str) -> Redis:
    """A Redis client that decodes replies to ``str`` and fails fast when Redis is gone.

    redis-py packs commands and parses replies with hiredis (a dependency): the admission
    call's ~75 arguments cost 150 µs in redis-py's pure-Python serializer, 9 with hiredis."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def server_time(redis: Redis) -> float:
    """Redis' clock (epoch seconds): what leases, slots and announcements are timed by, so a
    host whose own clock is off neither cuts others' short nor makes its own last longer."""
    return seconds_of(redis.time())  # type: ignore[arg-type]


#: How often a process measures how far its own clock is from Redis' (one ``TIME``).
CLOCK_CHECK_SECONDS = 10.0


class _ClockOffset:
    """Redis' clock minus this host's, measured at most every ``CLOCK_CHECK_SECONDS``."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.next_check = 0.0  # time.monotonic() of the next measure
        self.lock = threading.Lock()


_offsets: weakref.WeakKeyDictionary[Redis, _ClockOffset] = weakref.WeakKeyDictionary()
_offsets_lock = threading.Lock()


def redis_now(redis: Redis) -> float:
    """Now on Redis' clock (epoch seconds), without a round trip a call: the host's clock plus
    its offset to Redis' ``TIME``, measured once every ``CLOCK_CHECK_SECONDS``.

    Every instant Pulse writes into Redis for another process to compare with Redis' clock (a
    delayed job's or a retry's ``dueAt``, a previous signing secret's end) is taken from here,
    so a host whose clock is off by an hour neither delays its jobs by that hour nor runs them
    early. The error is the measuring round trip (a millisecond or so) plus the host clock's
    drift between measures. Redis unreachable: the last offset measured (0 before the first).
    """
    with _offsets_lock:
        clock = _offsets.get(redis)
        if clock is None:
            clock = _offsets[redis] = _ClockOffset()
    if time.monotonic() >= clock.next_check and clock.lock.acquire(blocking=False):
        try:
            before = time.time()
            server = server_time(redis)
            clock.offset = server - (before + time.time()) / 2
            clock.next_check = time.monotonic() + CLOCK_CHECK_SECONDS
        except RedisError:  # the caller's own call to Redis reports it; try again in a second
            clock.next_check = time.monotonic() + 1.0
        finally:
            clock.lock.release()
    return time.time() + clock.offset


def seconds_of(time_reply: tuple[int, int]) -> float:
    """A ``TIME`` reply (seconds, microseconds), as one read in a pipeline gives it, in epoch seconds."""
    seconds, micros = time_reply
    return int(seconds) + int(micros) / 1e6


def connect_impatient(url: str, *, timeout: float) -> Redis:
    """A client that gives up after ``timeout`` seconds and never retries: for a caller that
    must know in time that Redis stopped answering (lease renewal), not wait it out."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )


#: Error codes of a Redis that refuses work for now (a full memory, a replica during a
#: failover, a restart still loading, a busy script), as opposed to a bad command.
_REFUSALS = re.compile(r"\b(OOM|READONLY|LOADING|BUSY|MASTERDOWN|NOREPLICAS|TRYAGAIN|CLUSTERDOWN)\b")


def refuses_for_now(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing work for the time being (also inside a script)."""
    return isinstance(error, ResponseError) and bool(_REFUSALS.search(str(error)))


def check_durability(redis: Redis, *, name: str = "PULSE_REDIS_URL") -> list[str]:
    """Check that the Redis behind ``name`` can keep Pulse's promises; return warnings.

    Raises ``ConfigError`` unless ``maxmemory-policy`` is ``noeviction``: an evicting
    Redis deletes job records, messages and counters when it fills up, silently.
    Warns when AOF persistence is off, or fsyncs only when the OS decides: a restart
    then loses what was written since the last fsync or snapshot. Reads ``INFO`` (which
    managed services allow even where ``CONFIG`` is disabled).
    """
    memory: dict[str, Any] = redis.info("memory")  # type: ignore[assignment]
    policy = memory.get("maxmemory_policy")
    if policy is not None and policy != "noeviction":
        raise ConfigError(
            f"the Redis at {name} has maxmemory-policy {policy}: it would evict job records and "
            "messages when full, losing accepted jobs. Pulse needs maxmemory-policy noeviction "
            "(redis.conf `maxmemory-policy noeviction`, or `CONFIG SET maxmemory-policy noeviction` "
            "and `CONFIG REWRITE`; on a managed Redis, its parameter group)"
        )
    persistence: dict[str, Any] = redis.info("persistence")  # type: ignore[assignment]
    if not int(persistence.get("aof_enabled", 0)):
        return [
            f"the Redis at {name} runs without AOF persistence (appendonly no): a Redis restart loses "
            "every job, message and counter written since its last RDB snapshot (all of them if it "
            "takes none), including jobs already answered 202. "
            "Set `appendonly yes` with `appendfsync everysec` (a restart loses at most the last second) "
            "or `appendfsync always` (loses nothing acknowledged)"
        ]
    try:
        found: dict[str, str] = redis.config_get("appendfsync")  # type: ignore[assignment]
        fsync = (found or {}).get("appendfsync")
    except RedisError:  # CONFIG disabled (managed Redis): nothing more to check
        return []
    if fsync == "no":
        return [
            f"the Redis at {name} has appendfsync no: a crash of its host loses whatever the OS had not "
            "flushed yet (often up to 30 s of accepted jobs); use `appendfsync everysec` or `always`"
        ]
    return []


def check_at_start(redis_url: str, broker_url: str, log: logging.Logger) -> None:
    """``check_durability`` for the job store's Redis and, if it is another Redis, the broker.

    Refusals raise ``ConfigError``; warnings are logged. A Redis that does not answer yet
    is logged and not checked (the process starts, and retries it like any outage).
    """
    targets = {redis_url: "PULSE_REDIS_URL"}
    if urlparse(broker_url).scheme in {"redis", "rediss", "unix"}:
        targets.setdefault(broker_url, "PULSE_BROKER_URL")
    for url, name in targets.items():
        client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5, decode_responses=True)
        try:
            for warning in check_durability(client, name=name):
                log.warning("%s", warning)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("could not check the Redis at %s (%s): is it running?", name, exc)
        finally:
            client.close()
