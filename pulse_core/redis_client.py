"""Redis clients, built from a URL and passed in explicitly (no hidden globals)."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
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


#: How often a process measures Redis' clock (one ``TIME``).
CLOCK_CHECK_SECONDS = 10.0
#: A measure whose round trip took longer than this (a link that stalled one way, a Redis busy
#: with something else meanwhile) is not used to compare leases (``redis_clock_earliest``) and
#: is taken again after a second: its TIME may have run anywhere in that round trip.
TRUSTED_ROUND_TRIP_SECONDS = 0.25


def _steady() -> float:
    """A clock no one sets: it counts time a suspended host slept, and no step of the wall clock
    (an operator, NTP) moves it."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


@dataclass(frozen=True)
class _Reading:
    """One measure of Redis' clock: its TIME (epoch s), and ``_steady()`` when the request went
    out and when the answer came back (TIME ran somewhere in between)."""

    server: float
    sent: float
    received: float

    @property
    def round_trip(self) -> float:
        return self.received - self.sent


class _RedisClock:
    """Redis' clock as last measured (``reading``: replaced whole, never torn by a reader)."""

    def __init__(self) -> None:
        self.reading: _Reading | None = None  # None: never measured
        self.next_check = 0.0  # _steady() of the next measure
        self.lock = threading.Lock()


_clocks: weakref.WeakKeyDictionary[Redis, _RedisClock] = weakref.WeakKeyDictionary()
_clocks_lock = threading.Lock()


def _fresh_locks_after_fork() -> None:
    """In a forked child (a prefork pool process), new locks: one that another thread of the
    parent held as it forked would stay held in the child for ever. The measures stay good:
    ``_steady`` is the machine's clock, the same in every process."""
    global _clocks_lock
    _clocks_lock = threading.Lock()
    for clock in list(_clocks.values()):
        clock.lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def _measured(redis: Redis) -> _Reading | None:
    """``redis``'s clock as last measured, measured again first when the last measure is
    ``CLOCK_CHECK_SECONDS`` old (one thread measures; the others read the last measure meanwhile)."""
    with _clocks_lock:
        clock = _clocks.get(redis)
        if clock is None:
            clock = _clocks[redis] = _RedisClock()
    if _steady() >= clock.next_check and clock.lock.acquire(blocking=False):
        try:
            before = _steady()
            server = server_time(redis)
            after = _steady()
            clock.reading = _Reading(server, before, after)
            trusted = after - before <= TRUSTED_ROUND_TRIP_SECONDS
            clock.next_check = after + (CLOCK_CHECK_SECONDS if trusted else 1.0)
        except RedisError:  # the caller's own call to Redis reports it; try again in a second
            clock.next_check = _steady() + 1.0
        finally:
            clock.lock.release()
    return clock.reading


def redis_clock(redis: Redis) -> float | None:
    """Now on Redis' clock (epoch seconds), without a round trip a call: Redis' ``TIME`` as
    last measured (once every ``CLOCK_CHECK_SECONDS``) plus the time since on a clock that no
    one sets (``_steady``), taking TIME to have run mid-way through the measure's round trip.
    ``None`` while Redis has never answered this process.

    The host's own wall clock plays no part: an hour off, or stepped by an hour between two
    measures, it changes nothing. The error is at most half the measuring round trip (well
    under a millisecond on a LAN; seconds if the link or Redis stalled while it measured) plus
    the drift between two measures (microseconds): fine for due times, not for leases
    (``redis_clock_earliest``)."""
    reading = _measured(redis)
    if reading is None:
        return None
    return reading.server + (_steady() - (reading.sent + reading.received) / 2)


def redis_clock_earliest(redis: Redis) -> float | None:
    """The earliest Redis' clock can read now, by the last measure: its TIME ran at the latest
    when its answer came back, so Redis' clock is at least that TIME plus the time since. What
    a lease is compared with: never ahead of Redis' clock, so a live lease never looks lapsed,
    whichever way the measure's round trip was slow. ``None`` (the caller has Redis read its
    own ``TIME``) while Redis has never answered, or when the last measure's round trip took
    longer than ``TRUSTED_ROUND_TRIP_SECONDS`` (a lease written from it would be that much short)."""
    reading = _measured(redis)
    if reading is None or reading.round_trip > TRUSTED_ROUND_TRIP_SECONDS:
        return None
    return reading.server + (_steady() - reading.received)


def redis_now(redis: Redis) -> float:
    """Now on Redis' clock (``redis_clock``); the host's clock while Redis has never answered
    (whatever the caller then writes into Redis fails with the same error anyway).

    Every instant Pulse writes into Redis for another process to compare with Redis' clock (a
    delayed job's or a retry's ``dueAt``, a previous signing secret's end) is taken from here,
    so a host whose clock is off by an hour neither delays its jobs by that hour nor runs them
    early. Leases are compared with ``redis_clock_earliest`` instead, which is never ahead."""
    now = redis_clock(redis)
    return time.time() if now is None else now


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
        except (AuthenticationError, AuthorizationError, ResponseError) as exc:
            # An answer, not an outage: a wrong password or a database Redis does not have
            # fails every later command too, so it stops start-up like any bad setting.
            raise ConfigError(f"the Redis at {name} refused Pulse: {exc}") from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("could not check the Redis at %s (%s): is it running?", name, exc)
        finally:
            client.close()
