"""Every Lua script Pulse runs, tested on its own against the real private Redis.

Each case reads as given / when / then: the keys and records before the script runs,
the KEYS and ARGV it runs with, then its reply and the state it leaves. Keys are
written with ``{p}``, a prefix of the test's own, so no case sees another's data (or
the workers'); every key a case wrote is deleted after it.

The scripts are called directly (not through ``JobStore``/``Admission``), so a case
pins the script's own contract: the reply shape the Python side maps, and every write.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.commands.core import Script

from pulse_core import lua_scripts
from pulse_core.guards import admission, execution_limits
from pulse_core.http_handlers import attempts
from pulse_core.jobs import CLAIMABLE_STATES, FINAL_STATES
from pulse_core.store import capacity, dead_letters, dispatch, job_store, job_types, listing, recovery
from pulse_core.store.job_store import CancelOutcome
from pulse_worker import http_delivery

#: Every script file of every room, includes resolved, by room/name ("store/claim").
_SOURCES: dict[str, str] = lua_scripts.all_sources()
#: Every script the code declares, with its reply mapping, by room/name.
_DECLARED: dict[str, lua_scripts.LuaScript[Any]] = {
    f"{value.room.rpartition('.')[2]}/{value.name}": value
    for module in (
        job_store,
        dispatch,
        listing,
        dead_letters,
        recovery,
        job_types,
        capacity,
        admission,
        execution_limits,
        attempts,
        http_delivery,
    )
    for value in vars(module).values()
    if isinstance(value, lua_scripts.LuaScript)
}


def script(redis: Redis, name: str) -> Script:
    """The script Pulse registers under ``name`` (room/name)."""
    return redis.register_script(_SOURCES[name])


# --- how a case states Redis data ----------------------------------------------------


class Z(dict[str, float]):
    """A sorted set: member -> score."""


class _Anything:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


#: Matches any value (a time the script takes from the Redis clock).
ANY: Any = _Anything()


class Record:
    """A flat ``HGETALL`` reply, compared as the hash it spells (field order is Redis's)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, list) and dict(zip(other[::2], other[1::2], strict=True)) == self.fields

    def __repr__(self) -> str:
        return f"Record({self.fields!r})"


class Length:
    """A list with ``n`` entries whatever they are (a rate window's timestamps)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, list) and len(other) == self.n

    def __repr__(self) -> str:
        return f"Length({self.n})"


#: How long a case may take between writing its given state and reading what it left.
_SLACK = 5.0


class FromNow:
    """A GCRA window's key: its theoretical arrival time, ``seconds`` from now (epoch
    microseconds, as a string). Given, it is written as of the moment it is put; then,
    it matches a time that many seconds from now, less the time the case took."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def micros(self) -> str:
        return str(int((time.time() + self.seconds) * 1_000_000))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        ahead = int(other) / 1_000_000 - time.time()
        return self.seconds - _SLACK <= ahead <= self.seconds + 0.001

    def __repr__(self) -> str:
        return f"FromNow({self.seconds})"


class About:
    """A reply's seconds (a string) that were ``seconds`` when the case wrote its given
    state: as much, or less by the time the case took."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.seconds - _SLACK <= float(other) <= self.seconds + 0.001

    def __repr__(self) -> str:
        return f"About({self.seconds})"


class Soon:
    """A sorted-set score, or a hash field's time as text, ``seconds`` from when the case ran
    (epoch s, from the Redis clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, float | int | str):
            return False
        ahead = float(other) - time.time()
        return self.seconds - _SLACK <= ahead <= self.seconds + 1.0

    def __repr__(self) -> str:
        return f"Soon({self.seconds})"


class Having:
    """A hash holding at least these fields (others, such as a time bucket's, are not compared)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and all(other.get(k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        return f"Having({self.fields!r})"


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    #: Given: key -> dict (hash), Z (sorted set), str (string), list, set.
    given: dict[str, Any]
    #: When: the script runs with these KEYS and ARGV.
    keys: list[str]
    argv: list[Any]
    #: Then: its reply, and each listed key's value (``None``: the key is gone).
    reply: Any
    then: dict[str, Any] = field(default_factory=dict)
    #: Given TTLs (seconds) on keys of ``given``.
    given_ttl: dict[str, int] = field(default_factory=dict)
    #: Then: "expires" (a TTL is set) or "persists" (none).
    ttl: dict[str, str] = field(default_factory=dict)


def _sub(value: Any, prefix: str) -> Any:
    if isinstance(value, str):
        return value.replace("{p}", prefix)
    if isinstance(value, Z):
        return Z({_sub(k, prefix): v for k, v in value.items()})
    if isinstance(value, dict):
        return {_sub(k, prefix): _sub(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, prefix) for v in value]
    if isinstance(value, set):
        return {_sub(v, prefix) for v in value}
    if isinstance(value, Record):
        return Record(_sub(value.fields, prefix))
    if isinstance(value, Having):
        return Having(_sub(value.fields, prefix))
    return value


def _put(redis: Redis, key: str, value: Any) -> None:
    if isinstance(value, Z):
        redis.zadd(key, dict(value))
    elif isinstance(value, dict):
        redis.hset(key, mapping=value)
    elif isinstance(value, str):
        redis.set(key, value)
    elif isinstance(value, FromNow):
        redis.set(key, value.micros())
    elif isinstance(value, list):
        redis.rpush(key, *value)
    elif isinstance(value, set):
        redis.sadd(key, *value)
    else:
        raise TypeError(f"cannot store {value!r}")


def _read(redis: Redis, key: str) -> Any:
    kind = redis.type(key)
    readers: dict[str, Callable[[], Any]] = {
        "none": lambda: None,
        "hash": lambda: redis.hgetall(key),
        "zset": lambda: Z(redis.zrange(key, 0, -1, withscores=True)),
        "string": lambda: redis.get(key),
        "list": lambda: redis.lrange(key, 0, -1),
        "set": lambda: redis.smembers(key),
    }
    return readers[str(kind)]()


@pytest.fixture
def prefix(redis: Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    mine = f"pulse-test:{uuid.uuid4().hex}:"
    yield mine
    found = list(redis.scan_iter(match=mine + "*"))
    if found:
        redis.delete(*found)


# --- the cases -------------------------------------------------------------------------

T = "2026-01-01T00:00:00+00:00"
LOST = '{"type":"WorkerLost"}'


def _claim_argv(*, cycle: int = -1, attempt: int = -1, fallback: int = 3) -> list[Any]:
    # now, lease_until, owner, msg_cycle, msg_attempt, started_at, job_id, fallback_max_retries, lost_error
    return ["1000", "30", "w1", cycle, attempt, T, "j1", fallback, LOST, "tok1"]


#: What every job record has (``Job.from_redis`` needs it to map a record reply).
ID = {"jobId": "j1", "tenantId": "t1", "jobType": "a.b"}
CLAIM_KEYS = ["{p}job:j1", "{p}watch"]
CLAIM = [
    Case("missing record", "store/claim", {}, CLAIM_KEYS, _claim_argv(), ["missing"], {"{p}job:j1": None}),
    Case(
        "final state is the answer",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "succeeded", "attempts": "1"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["succeeded"],
        {"{p}job:j1": {**ID, "state": "succeeded", "attempts": "1"}, "{p}watch": None},
    ),
    Case(
        "a past cycle's copy is stale",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "queued", "attempts": "0", "cycle": "1"}},
        CLAIM_KEYS,
        _claim_argv(cycle=0, attempt=1),
        ["stale"],
        {"{p}job:j1": {**ID, "state": "queued", "attempts": "0", "cycle": "1"}},
    ),
    Case(
        "a copy of an attempt already started is stale",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "2", "leaseUntil": "990"}},
        CLAIM_KEYS,
        _claim_argv(attempt=1),
        ["stale"],
        {"{p}job:j1": {**ID, "state": "running", "attempts": "2", "leaseUntil": "990"}},
    ),
    Case(
        "a copy that skips an attempt is stale",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "queued", "attempts": "0"}},
        CLAIM_KEYS,
        _claim_argv(attempt=2),
        ["stale"],
        {"{p}job:j1": {**ID, "state": "queued", "attempts": "0"}},
    ),
    Case(
        "a live lease makes it busy",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "1010", "owner": "w0"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["busy"],
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "1010", "owner": "w0"}},
    ),
    Case(
        "a worker's claim reads Redis' clock: a lease live on it makes the job busy",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "9999999999", "owner": "w0"}},
        CLAIM_KEYS,
        ["", "30", "w1", -1, -1, T, "j1", 3, LOST, "tok1"],
        ["busy"],
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "9999999999", "owner": "w0"}},
    ),
    Case(
        "the same claim call run again (a retried timeout) is still that claim, not busy",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "1030", "claimToken": "tok1"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["claimed", Record({**ID, "state": "running", "attempts": "1", "leaseUntil": "1030", "claimToken": "tok1"}), 0],
    ),
    Case(
        "another delivery's claim of a running attempt is busy",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "1030", "claimToken": "tok0"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["busy"],
    ),
    Case(
        "a lapsed attempt asked to cancel ends the claim as cancel: nothing starts",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "990", "cancelRequested": "1"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["cancel", Record({**ID, "state": "running", "attempts": "1", "leaseUntil": "990", "cancelRequested": "1"})],
        {"{p}job:j1": {**ID, "state": "running", "attempts": "1", "leaseUntil": "990", "cancelRequested": "1"}},
    ),
    Case(
        "a queued job starts attempt 1",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "queued", "attempts": "0", "dueAt": "900", "finishedAt": T}},
        CLAIM_KEYS,
        _claim_argv(cycle=0, attempt=1),
        [
            "claimed",
            Record(
                {
                    **ID,
                    "state": "running",
                    "attempts": "1",
                    "startedAt": T,
                    "leaseUntil": Soon(30),
                    "owner": "w1",
                    "claimToken": "tok1",
                }
            ),
            0,
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "1",
                "startedAt": T,
                "leaseUntil": Soon(30),
                "owner": "w1",
                "claimToken": "tok1",
            },
            "{p}watch": Z({"j1": Soon(30)}),
        },
    ),
    Case(
        "a dispatched, rechecked job starts attempt 1: the reply is the record as written, its other fields kept",
        "store/claim",
        {
            "{p}job:j1": {
                **ID,
                "state": "queued",
                "attempts": "0",
                "payload": '{"n":1}',
                "enqueued": "1",
                "recoveries": "2",
                "laneWaits": "1",
            }
        },
        CLAIM_KEYS,
        _claim_argv(cycle=0, attempt=1),
        [
            "claimed",
            Record(
                {
                    **ID,
                    "state": "running",
                    "attempts": "1",
                    "payload": '{"n":1}',
                    "startedAt": T,
                    "leaseUntil": Soon(30),
                    "owner": "w1",
                    "claimToken": "tok1",
                }
            ),
            0,
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "1",
                "payload": '{"n":1}',
                "startedAt": T,
                "leaseUntil": Soon(30),
                "owner": "w1",
                "claimToken": "tok1",
            },
            "{p}watch": Z({"j1": Soon(30)}),
        },
    ),
    Case(
        "a scheduled job not yet due is early",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "scheduled", "attempts": "0", "dueAt": "1500"}},
        CLAIM_KEYS,
        _claim_argv(),
        ["early", "1500"],
        {"{p}job:j1": {**ID, "state": "scheduled", "attempts": "0", "dueAt": "1500"}, "{p}watch": None},
    ),
    Case(
        "a due retry starts the next attempt",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "retrying", "attempts": "1", "dueAt": "999"}, "{p}watch": Z({"j1": 999})},
        CLAIM_KEYS,
        _claim_argv(attempt=2),
        [
            "claimed",
            Record(
                {
                    **ID,
                    "state": "running",
                    "attempts": "2",
                    "startedAt": T,
                    "leaseUntil": Soon(30),
                    "owner": "w1",
                    "claimToken": "tok1",
                }
            ),
            0,
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "2",
                "startedAt": T,
                "leaseUntil": Soon(30),
                "owner": "w1",
                "claimToken": "tok1",
            },
            "{p}watch": Z({"j1": Soon(30)}),
        },
    ),
    Case(
        "a lapsed lease counts the crashed attempt and starts the next",
        "store/claim",
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "1",
                "maxRetries": "3",
                "leaseUntil": "990",
                "owner": "w0",
            }
        },
        CLAIM_KEYS,
        _claim_argv(),
        [
            "claimed",
            Record(
                {
                    **ID,
                    "state": "running",
                    "attempts": "2",
                    "maxRetries": "3",
                    "leaseUntil": Soon(30),
                    "owner": "w1",
                    "claimToken": "tok1",
                    "error": LOST,
                    "startedAt": T,
                }
            ),
            1,
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "2",
                "maxRetries": "3",
                "leaseUntil": Soon(30),
                "owner": "w1",
                "claimToken": "tok1",
                "error": LOST,
                "startedAt": T,
            },
            "{p}watch": Z({"j1": Soon(30)}),
        },
    ),
    Case(
        "a lapsed lease on the last attempt is exhausted",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "4", "maxRetries": "3", "leaseUntil": "990"}},
        CLAIM_KEYS,
        _claim_argv(),
        [
            "exhausted",
            Record({**ID, "state": "running", "attempts": "4", "maxRetries": "3", "leaseUntil": "990", "error": LOST}),
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "4",
                "maxRetries": "3",
                "leaseUntil": "990",
                "error": LOST,
            },
            "{p}watch": None,
        },
    ),
    Case(
        "without maxRetries the fallback bounds crashed attempts",
        "store/claim",
        {"{p}job:j1": {**ID, "state": "running", "attempts": "2", "leaseUntil": "990"}},
        CLAIM_KEYS,
        _claim_argv(fallback=1),
        ["exhausted", Record({**ID, "state": "running", "attempts": "2", "leaseUntil": "990", "error": LOST})],
        {"{p}job:j1": {**ID, "state": "running", "attempts": "2", "leaseUntil": "990", "error": LOST}},
    ),
    Case(
        "a lapsed lease while being dead-lettered is exhausted, its error kept",
        "store/claim",
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "1",
                "leaseUntil": "990",
                "deadLetter": "1",
                "error": "{}",
            }
        },
        CLAIM_KEYS,
        _claim_argv(),
        [
            "exhausted",
            Record({**ID, "state": "running", "attempts": "1", "leaseUntil": "990", "deadLetter": "1", "error": "{}"}),
        ],
        {
            "{p}job:j1": {
                **ID,
                "state": "running",
                "attempts": "1",
                "leaseUntil": "990",
                "deadLetter": "1",
                "error": "{}",
            }
        },
    ),
]

REFRESH = [
    Case(
        "only the owner's running attempts are extended, from Redis' clock; the watch entry only if present",
        "store/refresh_leases",
        {
            "{p}job:j1": {"state": "running", "owner": "w1", "leaseUntil": "1000"},
            "{p}job:j2": {"state": "running", "owner": "w2", "leaseUntil": "1000"},
            "{p}job:j3": {"state": "queued", "owner": "w1"},
            "{p}job:j4": {"state": "running", "owner": "w1", "leaseUntil": "1000"},
            "{p}watch": Z({"j1": 1000, "j2": 1000}),
        },
        ["{p}watch", "{p}job:j1", "{p}job:j2", "{p}job:j3", "{p}job:j4"],
        ["30", "w1", "j1", "j2", "j3", "j4"],
        2,
        {
            "{p}job:j1": {"state": "running", "owner": "w1", "leaseUntil": ANY},
            "{p}job:j2": {"state": "running", "owner": "w2", "leaseUntil": "1000"},
            "{p}job:j3": {"state": "queued", "owner": "w1"},
            "{p}watch": Z({"j1": ANY, "j2": 1000}),
        },
    ),
    Case(
        "a renewal never moves a lease back (a later one already went further)",
        "store/refresh_leases",
        {
            "{p}job:j1": {"state": "running", "owner": "w1", "leaseUntil": "9999999999"},
            "{p}watch": Z({"j1": 9999999999}),
        },
        ["{p}watch", "{p}job:j1"],
        ["30", "w1", "j1"],
        0,
        {
            "{p}job:j1": {"state": "running", "owner": "w1", "leaseUntil": "9999999999"},
            "{p}watch": Z({"j1": 9999999999}),
        },
    ),
]

_RUNNING = {"state": "running", "attempts": "1", "leaseUntil": "1030", "owner": "w1", "tenantId": "t1"}
RETRY_KEYS = ["{p}job:j1", "{p}watch"]
SCHEDULE_RETRY = [
    Case(
        "the running attempt becomes retrying, watched at its check time",
        "store/schedule_retry",
        {"{p}job:j1": _RUNNING, "{p}watch": Z({"j1": 1030})},
        RETRY_KEYS,
        [1, 0, "1100", "1130", '{"e":1}', "j1"],
        1,
        {
            "{p}job:j1": {"state": "retrying", "attempts": "1", "tenantId": "t1", "dueAt": "1100", "error": '{"e":1}'},
            "{p}watch": Z({"j1": 1130}),
        },
    ),
    Case(
        "another attempt's failure changes nothing",
        "store/schedule_retry",
        {"{p}job:j1": _RUNNING},
        RETRY_KEYS,
        [2, 0, "1100", "1130", "{}", "j1"],
        0,
        {"{p}job:j1": _RUNNING, "{p}watch": None},
    ),
    Case(
        "another cycle's failure changes nothing",
        "store/schedule_retry",
        {"{p}job:j1": _RUNNING},
        RETRY_KEYS,
        [1, 1, "1100", "1130", "{}", "j1"],
        0,
        {"{p}job:j1": _RUNNING},
    ),
    Case(
        "a job whose cancel was asked changes nothing: it ends cancelled, not retried",
        "store/schedule_retry",
        {"{p}job:j1": {**_RUNNING, "cancelRequested": "1"}, "{p}watch": Z({"j1": 1030})},
        RETRY_KEYS,
        [1, 0, "1100", "1130", "{}", "j1"],
        -1,
        {"{p}job:j1": {**_RUNNING, "cancelRequested": "1"}, "{p}watch": Z({"j1": 1030})},
    ),
    Case(
        "a job no longer running changes nothing",
        "store/schedule_retry",
        {"{p}job:j1": {**_RUNNING, "state": "cancelled"}},
        RETRY_KEYS,
        [1, 0, "1100", "1130", "{}", "j1"],
        0,
        {"{p}job:j1": {**_RUNNING, "state": "cancelled"}},
    ),
]

MARK_DEAD_LETTER = [
    Case(
        "the running attempt records its error and the dead-letter flag",
        "store/mark_dead_letter",
        {"{p}job:j1": _RUNNING},
        ["{p}job:j1"],
        [1, 0, '{"e":2}'],
        1,
        {"{p}job:j1": {**_RUNNING, "error": '{"e":2}', "deadLetter": "1"}},
    ),
    Case(
        "another attempt changes nothing",
        "store/mark_dead_letter",
        {"{p}job:j1": _RUNNING},
        ["{p}job:j1"],
        [3, 0, "{}"],
        0,
        {"{p}job:j1": _RUNNING},
    ),
    Case(
        "a job whose cancel was asked changes nothing: it ends cancelled, not dead",
        "store/mark_dead_letter",
        {"{p}job:j1": {**_RUNNING, "cancelRequested": "1"}},
        ["{p}job:j1"],
        [1, 0, '{"e":2}'],
        -1,
        {"{p}job:j1": {**_RUNNING, "cancelRequested": "1"}},
    ),
]

FINAL_KEYS = ["{p}job:j1", "{p}watch", "{p}dead", "{p}counts"]


def _finalize_argv(
    state: str,
    from_: str,
    *,
    result: str = "",
    error: str = "",
    attempt: int = 1,
    cycle: int = 0,
    most: int = 100,
    budget: int = 0,
):
    # state, finished_at, result, error, retention, job_id, now_ms, from, attempt, cycle,
    # max dead letters, dead letter retention (ms), result budget (bytes; 0 = no check)
    return [state, T, result, error, 3600, "j1", 5000, from_, attempt, cycle, most, 3000, budget]


_FINALIZE_GIVEN = {
    "{p}job:j1": {**_RUNNING, "leaseUntil": "4", "error": '{"old":1}', "dueAt": "3"},
    "{p}watch": Z({"j1": 4}),
    "{p}counts": {"pending": "2"},
}
FINALIZE = [
    Case(
        "success ends the attempt: counted once, unwatched, expiring, old error gone",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt", result='{"ok":1}'),
        1,
        {
            "{p}job:j1": {
                "state": "succeeded",
                "attempts": "1",
                "tenantId": "t1",
                # the last attempt's lease and owner stay; its due time goes
                "leaseUntil": "4",
                "owner": "w1",
                "finishedAt": T,
                "result": '{"ok":1}',
                # the result's bytes now count (the record had none admitted)
                "storedBytes": "8",
            },
            "{p}watch": None,
            "{p}dead": None,
            "{p}counts": {"pending": "1", "held": "0", "total": "8", "oldest": "0", "b0": "8"},
        },
        ttl={"{p}job:j1": "expires"},
    ),
    Case(
        "death joins the dead letters at now and persists",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("dead", "attempt", error='{"e":3}'),
        1,
        {
            "{p}job:j1": {
                "state": "dead",
                "attempts": "1",
                "tenantId": "t1",
                # the last attempt's lease and owner stay; its due time goes
                "leaseUntil": "4",
                "owner": "w1",
                "finishedAt": T,
                "error": '{"e":3}',
                "storedBytes": "7",
            },
            "{p}watch": None,
            "{p}dead": Z({"j1": 5000}),
            "{p}counts": {"pending": "1", "held": "7", "total": "0"},
        },
        given_ttl={"{p}job:j1": 600},
        ttl={"{p}job:j1": "persists"},
    ),
    Case(
        "a cancelled attempt keeps its previous error when none is given",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("cancelled", "attempt"),
        1,
        {
            "{p}job:j1": {
                "state": "cancelled",
                "attempts": "1",
                "tenantId": "t1",
                # the last attempt's lease and owner stay; its due time goes
                "leaseUntil": "4",
                "owner": "w1",
                "finishedAt": T,
                "error": '{"old":1}',
                "storedBytes": "9",
            },
            "{p}counts": {"pending": "1", "held": "0", "total": "9", "oldest": "0", "b0": "9"},
        },
    ),
    Case(
        "another attempt is not finalized",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt", attempt=2),
        0,
        _FINALIZE_GIVEN,
    ),
    Case(
        "another cycle is not finalized",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt", cycle=1),
        0,
        _FINALIZE_GIVEN,
    ),
    Case(
        "an orphan whose lease lapsed (4 s < now 5000 ms) is finalized",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("dead", "orphan"),
        1,
        {
            "{p}job:j1": {
                "state": "dead",
                "attempts": "1",
                "tenantId": "t1",
                # the last attempt's lease and owner stay; its due time goes
                "leaseUntil": "4",
                "owner": "w1",
                "finishedAt": T,
                "error": '{"old":1}',
                "storedBytes": "9",
            }
        },
    ),
    Case(
        "an orphan whose lease is alive is not",
        "store/finalize",
        {**_FINALIZE_GIVEN, "{p}job:j1": {**_RUNNING, "leaseUntil": "6"}},
        FINAL_KEYS,
        _finalize_argv("dead", "orphan"),
        0,
        {"{p}job:j1": {**_RUNNING, "leaseUntil": "6"}, "{p}counts": {"pending": "2"}, "{p}dead": None},
    ),
    *[
        Case(
            f"a {state} job is finalized from waiting",
            "store/finalize",
            {"{p}job:j1": {"state": state, "attempts": "0", "tenantId": "t1"}, "{p}counts": {"pending": "1"}},
            FINAL_KEYS,
            _finalize_argv("cancelled", "waiting"),
            1,
            {
                "{p}job:j1": {"state": "cancelled", "attempts": "0", "tenantId": "t1", "finishedAt": T},
                "{p}counts": {"pending": "0", "held": "0", "total": "0"},
            },
        )
        for state in ("queued", "scheduled", "retrying")
    ],
    Case(
        "a running job is not finalized from waiting",
        "store/finalize",
        _FINALIZE_GIVEN,
        FINAL_KEYS,
        _finalize_argv("cancelled", "waiting"),
        0,
        _FINALIZE_GIVEN,
    ),
    Case(
        "a replayed job not yet claimed is finalized",
        "store/finalize",
        {
            "{p}job:j1": {"state": "queued", "attempts": "0", "cycle": "1", "tenantId": "t1"},
            "{p}counts": {"pending": "1"},
        },
        FINAL_KEYS,
        _finalize_argv("dead", "replayed", attempt=0, cycle=1),
        1,
        {
            "{p}job:j1": {"state": "dead", "attempts": "0", "cycle": "1", "tenantId": "t1", "finishedAt": T},
            "{p}dead": Z({"j1": 5000}),
            "{p}counts": {"pending": "0", "held": "0", "total": "0"},
        },
    ),
    Case(
        "a replayed job already claimed is not",
        "store/finalize",
        {"{p}job:j1": {"state": "queued", "attempts": "1", "cycle": "1", "tenantId": "t1"}},
        FINAL_KEYS,
        _finalize_argv("dead", "replayed", attempt=0, cycle=1),
        0,
        {"{p}job:j1": {"state": "queued", "attempts": "1", "cycle": "1", "tenantId": "t1"}, "{p}dead": None},
    ),
    Case(
        "a missing record is not finalized",
        "store/finalize",
        {"{p}counts": {"pending": "1"}},
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt"),
        0,
        {"{p}job:j1": None, "{p}counts": {"pending": "1"}},
    ),
    Case(
        "a death past the cap sends the oldest letter away, its record now expiring",
        "store/finalize",
        {
            "{p}job:j1": _RUNNING,
            "{p}job:old": {"state": "dead"},
            "{p}job:mid": {"state": "dead"},
            "{p}dead": Z({"old": 4000, "mid": 4500}),
            "{p}counts": {"pending": "1"},
        },
        FINAL_KEYS,
        _finalize_argv("dead", "attempt", most=2),
        1,
        {"{p}dead": Z({"mid": 4500, "j1": 5000}), "{p}job:old": {"state": "dead"}},
        ttl={"{p}job:old": "expires", "{p}job:mid": "persists", "{p}job:j1": "persists"},
    ),
    Case(
        "a death sends away letters older than the dead-letter retention",
        "store/finalize",
        {
            "{p}job:j1": _RUNNING,
            "{p}job:old": {"state": "dead"},
            "{p}dead": Z({"old": 1000}),
            "{p}counts": {"pending": "1"},
        },
        FINAL_KEYS,
        _finalize_argv("dead", "attempt"),
        1,
        {"{p}dead": Z({"j1": 5000})},
        ttl={"{p}job:old": "expires"},
    ),
]

#: The marker a result past the budget leaves (final_transition), for a 8-byte result and a budget of 40.
_NOT_KEPT = (
    '{"type":"ResultNotKept","message":"the result (8 bytes) was not kept: '
    "the tenant's storage budget of 40 bytes (max_stored_bytes) is full\"}"
)
_HOLDING = {**_RUNNING, "recordBytes": "30", "storedBytes": "30"}
#: What finalize leaves of _HOLDING's fields: all of them (the last attempt's lease and owner stay).
_HELD_DONE = dict(_HOLDING)
FINALIZE += [
    Case(
        "a finished job's bytes, its result's too, leave held for the retained bucket of now",
        "store/finalize",
        {"{p}job:j1": _HOLDING, "{p}counts": {"pending": "1", "held": "50"}},
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt", result='{"ok":1}', budget=1000),
        1,
        {
            "{p}job:j1": {
                **_HELD_DONE,
                "state": "succeeded",
                "finishedAt": T,
                "result": '{"ok":1}',
                "storedBytes": "38",
            },
            # now: 5 s, bucket 0
            "{p}counts": {"pending": "0", "held": "20", "total": "38", "oldest": "0", "b0": "38"},
        },
        # the tenant's counts last as long as the tenant
        ttl={"{p}job:j1": "expires", "{p}counts": "persists"},
    ),
    Case(
        "a result past the storage budget is not kept: the job succeeds with ResultNotKept",
        "store/finalize",
        {"{p}job:j1": _HOLDING, "{p}counts": {"pending": "1", "held": "35"}},
        FINAL_KEYS,
        _finalize_argv("succeeded", "attempt", result='{"ok":1}', budget=40),
        1,
        {
            "{p}job:j1": {
                **_HELD_DONE,
                "state": "succeeded",
                "finishedAt": T,
                "error": _NOT_KEPT,
                "storedBytes": str(30 + len(_NOT_KEPT)),
            },
            "{p}counts": Having({"held": "5", "total": str(30 + len(_NOT_KEPT))}),
        },
    ),
    Case(
        "a death keeps the bytes held (a dead letter persists), its error's added",
        "store/finalize",
        {"{p}job:j1": _HOLDING, "{p}counts": {"pending": "1", "held": "30"}},
        FINAL_KEYS,
        _finalize_argv("dead", "attempt", error='{"e":3}'),
        1,
        {"{p}counts": {"pending": "0", "held": "37", "total": "0"}, "{p}job:j1": Having({"storedBytes": "37"})},
    ),
    Case(
        "a letter leaving the dead letters moves its bytes from held to retained",
        "store/finalize",
        {
            "{p}job:j1": _HOLDING,
            "{p}job:old": {"state": "dead", "storedBytes": "12"},
            "{p}dead": Z({"old": 4000}),
            "{p}counts": {"pending": "1", "held": "42"},
        },
        FINAL_KEYS,
        _finalize_argv("dead", "attempt", most=1),
        1,
        {"{p}dead": Z({"j1": 5000}), "{p}counts": Having({"pending": "0", "held": "30", "total": "12"})},
    ),
]

# tenant_id, finished_at, retention, job_id, now_ms
CANCEL_ARGV = ["t1", T, 3600, "j1", 5000]
CANCEL_KEYS = [*FINAL_KEYS, "{p}due", "{p}pmsg"]
CANCEL = [
    Case("a missing job", "store/cancel", {}, CANCEL_KEYS, CANCEL_ARGV, "missing", {"{p}job:j1": None}),
    Case(
        "another tenant's job is missing",
        "store/cancel",
        {"{p}job:j1": {"state": "queued", "tenantId": "t2"}, "{p}counts": {"pending": "1"}},
        CANCEL_KEYS,
        CANCEL_ARGV,
        "missing",
        {"{p}job:j1": {"state": "queued", "tenantId": "t2"}, "{p}counts": {"pending": "1"}},
    ),
    *[
        Case(
            f"a {state} job is cancelled at once, its parked message dropped",
            "store/cancel",
            {
                "{p}job:j1": {"state": state, "tenantId": "t1", "dueAt": "9"},
                "{p}counts": {"pending": "1"},
                "{p}watch": Z({"j1": 9}),
                "{p}due": Z({"j1": 9, "j2": 10}),
                "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            },
            CANCEL_KEYS,
            CANCEL_ARGV,
            "cancelled",
            {
                "{p}job:j1": {"state": "cancelled", "tenantId": "t1", "finishedAt": T},
                "{p}counts": {"pending": "0", "held": "0", "total": "0"},
                "{p}watch": None,
                "{p}dead": None,
                "{p}due": Z({"j2": 10}),
                "{p}pmsg": {"j2": "{p}q\nm2"},
            },
            ttl={"{p}job:j1": "expires"},
        )
        for state in ("queued", "scheduled", "retrying")
    ],
    Case(
        "a running job is asked to stop",
        "store/cancel",
        {"{p}job:j1": {"state": "running", "tenantId": "t1"}, "{p}counts": {"pending": "1"}},
        CANCEL_KEYS,
        CANCEL_ARGV,
        "running",
        {"{p}job:j1": {"state": "running", "tenantId": "t1", "cancelRequested": "1"}, "{p}counts": {"pending": "1"}},
    ),
    *[
        Case(
            f"a {state} job is already finished",
            "store/cancel",
            {"{p}job:j1": {"state": state, "tenantId": "t1"}},
            CANCEL_KEYS,
            CANCEL_ARGV,
            f"finished:{state}",
            {"{p}job:j1": {"state": state, "tenantId": "t1"}, "{p}counts": None},
        )
        for state in ("succeeded", "dead", "cancelled")
    ],
]

RECOVER_KEYS = ["{p}job:j1", "{p}watch"]
# job id, recheck base for a lapse (s), for a queued job (s), longest recheck (s), lane waits
RECOVER_ARGV = ["j1", "10", "60", "3600", "2"]
#: Far in the future on any clock (the script reads Redis' TIME).
LATER = "9999999999"
RECOVER = [
    *[
        Case(
            f"{what} is unwatched",
            "store/recover",
            given,
            RECOVER_KEYS,
            RECOVER_ARGV,
            ["gone"],
            {"{p}watch": None},
        )
        for what, given in (
            ("a missing record", {"{p}watch": Z({"j1": 900})}),
            ("a final job", {"{p}job:j1": {"state": "dead"}, "{p}watch": Z({"j1": 900})}),
        )
    ],
    Case(
        "a job whose deadline another sweep already moved is left alone",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": float(LATER)})},
        RECOVER_KEYS,
        RECOVER_ARGV,
        ["alive"],
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": float(LATER)})},
    ),
    Case(
        "a running job with a live lease is re-armed at its lease",
        "store/recover",
        {"{p}job:j1": {"state": "running", "leaseUntil": LATER}, "{p}watch": Z({"j1": 900})},
        RECOVER_KEYS,
        RECOVER_ARGV,
        ["alive"],
        {"{p}job:j1": {"state": "running", "leaseUntil": LATER}, "{p}watch": Z({"j1": float(LATER)})},
    ),
    Case(
        "a scheduled job not yet due is re-armed at its due time",
        "store/recover",
        {"{p}job:j1": {"state": "scheduled", "dueAt": LATER}, "{p}watch": Z({"j1": 900})},
        RECOVER_KEYS,
        RECOVER_ARGV,
        ["alive"],
        {"{p}watch": Z({"j1": float(LATER)})},
    ),
    Case(
        "a running job whose lease lapsed is republished and counted, re-armed a lapse base later",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "running", "leaseUntil": "900", "attempts": "1"}, "{p}watch": Z({"j1": 900})},
        RECOVER_KEYS,
        RECOVER_ARGV,
        [
            "republish",
            Record(
                {**ID, "state": "running", "leaseUntil": "900", "attempts": "1", "recoveries": "1", "laneWaits": "0"}
            ),
        ],
        {"{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "a retrying job past its due time is republished",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "retrying", "dueAt": "999"}, "{p}watch": Z({"j1": 999})},
        RECOVER_KEYS,
        RECOVER_ARGV,
        ["republish", Record({**ID, "state": "retrying", "dueAt": "999", "recoveries": "1", "laneWaits": "0"})],
    ),
    Case(
        "a queued job waiting in its ready set waits for its queue's dispatcher, uncounted",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": 900}), "{p}ready": Z({"j1": 5e15})},
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["waiting"],
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "a queued job parked on an execution limit waits for its release, uncounted",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": 900}), "{p}pmsg": {"j1": "q\nm"}},
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["waiting"],
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": ANY})},
    ),
    *[
        Case(
            f"a {state} job past due, parked on an execution limit, waits for its release: no copy",
            "store/recover",
            {
                "{p}job:j1": {**ID, "state": state, "dueAt": "999"},
                "{p}watch": Z({"j1": 999}),
                "{p}pmsg": {"j1": "q\nm"},
            },
            [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
            RECOVER_ARGV,
            ["waiting"],
            {"{p}job:j1": {**ID, "state": state, "dueAt": "999"}, "{p}watch": Z({"j1": ANY})},
        )
        for state in ("retrying", "scheduled")
    ],
    Case(
        "a queued job nothing claimed, out of its ready set, its queue empty, is republished",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": 900})},
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["republish", Record({**ID, "state": "queued", "recoveries": "1", "laneWaits": "0"})],
    ),
    Case(
        "a queued job whose queue still holds messages waits a check",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued"}, "{p}watch": Z({"j1": 900}), "{p}lane": ["m1"]},
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["waiting"],
        {"{p}job:j1": {**ID, "state": "queued", "laneWaits": "1"}},
    ),
    *[
        Case(
            f"a {state} job past its due time whose queue still holds messages (released from parking) waits a check",
            "store/recover",
            {"{p}job:j1": {**ID, "state": state, "dueAt": "999"}, "{p}watch": Z({"j1": 999}), "{p}lane": ["m1"]},
            [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
            RECOVER_ARGV,
            ["waiting"],
            {"{p}job:j1": {**ID, "state": state, "dueAt": "999", "laneWaits": "1"}},
        )
        for state in ("scheduled", "retrying")
    ],
    Case(
        "a running job whose lease lapsed, waiting in its ready set for its next attempt, is not copied",
        "store/recover",
        {
            "{p}job:j1": {**ID, "state": "running", "leaseUntil": "900", "recoveries": "1"},
            "{p}watch": Z({"j1": 900}),
            "{p}ready": Z({"j1": 1}),
        },
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["waiting"],
        {"{p}job:j1": {**ID, "state": "running", "leaseUntil": "900", "recoveries": "1"}, "{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "a running job whose lease lapsed is republished at once though its queue is busy",
        "store/recover",
        {
            "{p}job:j1": {**ID, "state": "running", "leaseUntil": "900", "attempts": "1"},
            "{p}watch": Z({"j1": 900}),
            "{p}lane": ["m1"],
        },
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        [
            "republish",
            Record(
                {**ID, "state": "running", "leaseUntil": "900", "attempts": "1", "recoveries": "1", "laneWaits": "0"}
            ),
        ],
    ),
    Case(
        "a queued job that waited its checks is republished though its queue is busy",
        "store/recover",
        {"{p}job:j1": {**ID, "state": "queued", "laneWaits": "2"}, "{p}watch": Z({"j1": 900}), "{p}lane": ["m1"]},
        [*RECOVER_KEYS, "{p}ready", "{p}pmsg", "{p}lane"],
        RECOVER_ARGV,
        ["republish", Record({**ID, "state": "queued", "recoveries": "1", "laneWaits": "0"})],
    ),
]

OVERDUE = [
    Case(
        "the ids past their deadline on Redis' clock, most overdue first, up to the limit",
        "store/overdue",
        {"{p}watch": Z({"a": 900, "b": 800, "c": 950, "later": float(LATER)})},
        ["{p}watch"],
        ["2"],
        ["b", "a"],
    ),
]

POSTPONE = [
    Case(
        "a watched job's check moves later",
        "store/postpone_check",
        {"{p}watch": Z({"j1": 900}), "{p}job:j1": {"state": "queued"}},
        ["{p}watch", "{p}job:j1"],
        ["j1", "30"],
        0,
        {"{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "a job no longer watched is not watched again",
        "store/postpone_check",
        {"{p}watch": Z({"j0": 900}), "{p}job:j1": {"state": "queued"}},
        ["{p}watch", "{p}job:j1"],
        ["j1", "30"],
        0,
        {"{p}watch": Z({"j0": 900})},
    ),
    Case(
        "a later check is never moved earlier",
        "store/postpone_check",
        {"{p}watch": Z({"j1": float(LATER)}), "{p}job:j1": {"state": "retrying"}},
        ["{p}watch", "{p}job:j1"],
        ["j1", "30"],
        0,
        {"{p}watch": Z({"j1": float(LATER)})},
    ),
    Case(
        "a running job's deadline stays its lease (the message postponed is a copy of its attempt's)",
        "store/postpone_check",
        {"{p}watch": Z({"j1": 900}), "{p}job:j1": {"state": "running", "leaseUntil": "900"}},
        ["{p}watch", "{p}job:j1"],
        ["j1", "30"],
        0,
        {"{p}watch": Z({"j1": 900})},
    ),
]

LISTING_ADD = [
    Case(
        "an entry later than the newest is added at its own score",
        "store/listing_add",
        {"{p}index": Z({"a": 1000})},
        ["{p}index"],
        ["2000", "b"],
        1,
        {"{p}index": Z({"a": 1000, "b": 2000})},
    ),
    Case(
        "an entry of the same millisecond as the newest comes after it (1/1024 ms later)",
        "store/listing_add",
        {"{p}index": Z({"a": 2000})},
        ["{p}index"],
        ["2000", "b"],
        1,
        {"{p}index": Z({"a": 2000, "b": 2000 + 1 / 1024})},
    ),
    Case(
        "with the tenant's counts, the newest score kept there places the entry, and moves on",
        "store/listing_add",
        {"{p}index": Z({"a": 1000}), "{p}counts": {"newest": "2000"}},
        ["{p}index", "{p}counts"],
        ["2000", "b"],
        1,
        {"{p}index": Z({"a": 1000, "b": 2000 + 1 / 1024}), "{p}counts": {"newest": repr(2000 + 1 / 1024)}},
    ),
    Case(
        "with the tenant's counts, its first entry is added at its own score, the newest now",
        "store/listing_add",
        {},
        ["{p}index", "{p}counts"],
        ["2000", "b"],
        1,
        {"{p}index": Z({"b": 2000}), "{p}counts": {"newest": "2000"}},
    ),
]

FORGET = [
    Case(
        "a forgotten dead letter's bytes leave held for the retained bucket of now",
        "store/forget_dead_letter",
        {"{p}dead": Z({"j1": 1}), "{p}job:j1": {"state": "dead", "storedBytes": "20"}, "{p}counts": {"held": "50"}},
        ["{p}dead", "{p}job:j1", "{p}counts"],
        ["j1", "600"],
        1,
        {"{p}counts": Having({"held": "30", "total": "20"})},
        ttl={"{p}counts": "persists"},
    ),
    Case(
        "the tenant's dead letter is dropped and its record starts to expire",
        "store/forget_dead_letter",
        {"{p}dead": Z({"j1": 1, "j0": 2}), "{p}job:j1": {"state": "dead"}},
        ["{p}dead", "{p}job:j1", "{p}counts"],
        ["j1", "600"],
        1,
        {"{p}dead": Z({"j0": 2}), "{p}job:j1": {"state": "dead"}},
        ttl={"{p}job:j1": "expires"},
    ),
    Case(
        "another tenant's dead job is left exactly as it was: no expiry set",
        "store/forget_dead_letter",
        {"{p}dead": Z({"j0": 2}), "{p}job:j1": {"state": "dead"}},
        ["{p}dead", "{p}job:j1", "{p}counts"],
        ["j1", "600"],
        0,
        {"{p}dead": Z({"j0": 2}), "{p}job:j1": {"state": "dead"}},
        ttl={"{p}job:j1": "persists"},
    ),
]

RATE_ACQUIRE = [
    Case(
        "empty windows count the start in each",
        "guards/rate_acquire",
        {},
        ["{p}w1", "{p}w2"],
        ["0.1", 2, 1, 10, 60],
        "0",
        {"{p}w1": Length(1), "{p}w2": Length(1)},
        ttl={"{p}w1": "expires", "{p}w2": "expires"},
    ),
    Case(
        "starts older than the window (and its slack) leave room",
        "guards/rate_acquire",
        {"{p}w1": ["900", "800"]},
        ["{p}w1"],
        ["0.1", 2, 1],
        "0",
        {"{p}w1": Length(2)},
    ),
    Case(
        "a full window refuses with the wait, and no window counts the start",
        "guards/rate_acquire",
        {"{p}w1": ["900"], "{p}w2": ["9999999999", "9999999999"]},
        ["{p}w1", "{p}w2"],
        ["0.1", 2, 1, 2, 60],
        ANY,
        {"{p}w1": ["900"], "{p}w2": ["9999999999", "9999999999"]},
    ),
]

_HTTP_RUNNING = {"state": "running", "attempts": "1", "cycle": "0", "owner": "w1/t1"}
HTTP_ATTEMPTS = [
    Case(
        "a 202 hands the running attempt off: leased on Redis' clock, owned as handed off",
        "http_handlers/hand_off",
        {"{p}job:j1": _HTTP_RUNNING},
        ["{p}job:j1", "{p}watch"],
        ["1", "0", 60, "j1", "http-202"],
        1,
        {"{p}job:j1": {**_HTTP_RUNNING, "owner": "http-202", "leaseUntil": ANY}, "{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "another attempt is not handed off",
        "http_handlers/hand_off",
        {"{p}job:j1": {**_HTTP_RUNNING, "attempts": "2"}},
        ["{p}job:j1", "{p}watch"],
        ["1", "0", 60, "j1", "http-202"],
        0,
        {"{p}job:j1": {**_HTTP_RUNNING, "attempts": "2"}, "{p}watch": None},
    ),
    Case(
        "the handed-off attempt's token is ok, and a heartbeat extends its lease",
        "http_handlers/check_attempt",
        {"{p}tok": "1 0 abc1", "{p}job:j1": {**_HTTP_RUNNING, "owner": "http-202", "leaseUntil": "5"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["abc1", 30, "j1", "http-202"],
        ["ok", "1", "0"],
        {"{p}job:j1": {**_HTTP_RUNNING, "owner": "http-202", "leaseUntil": ANY}, "{p}watch": Z({"j1": ANY})},
    ),
    Case(
        "a token that is not the attempt's is refused",
        "http_handlers/check_attempt",
        {"{p}tok": "1 0 abc1", "{p}job:j1": {**_HTTP_RUNNING, "owner": "http-202"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["ffff", "", "j1", "http-202"],
        ["bad-token"],
    ),
    Case(
        "the running attempt's token before its worker recorded the 202 is not handed off yet",
        "http_handlers/check_attempt",
        {"{p}tok": "1 0 abc1", "{p}job:j1": {**_HTTP_RUNNING, "leaseUntil": "5"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["abc1", 30, "j1", "http-202"],
        ["not-handed-off"],
        {"{p}job:j1": {**_HTTP_RUNNING, "leaseUntil": "5"}, "{p}watch": None},
    ),
    Case(
        "a token of an attempt that is over names the job's state and the token's attempt and cycle",
        "http_handlers/check_attempt",
        {"{p}tok": "1 0 abc1", "{p}job:j1": {**_HTTP_RUNNING, "state": "succeeded", "owner": "http-202"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["abc1", "", "j1", "http-202"],
        ["not-running", "succeeded", "1", "0"],
    ),
    Case(
        "a token that reported its outcome names that outcome, whatever the job does since",
        "http_handlers/check_attempt",
        {"{p}spent": "abc1 0ff1ce", "{p}tok": "2 0 abc2", "{p}job:j1": {**_HTTP_RUNNING, "attempts": "2"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["abc1", "", "j1", "http-202"],
        ["spent", "0ff1ce"],
    ),
    Case(
        "the next attempt's token is not taken for the spent one",
        "http_handlers/check_attempt",
        {"{p}spent": "abc1 0ff1ce", "{p}tok": "2 0 abc2", "{p}job:j1": {**_HTTP_RUNNING, "attempts": "2"}},
        ["{p}tok", "{p}job:j1", "{p}watch", "{p}spent"],
        ["abc2", "", "j1", "http-202"],
        ["not-handed-off"],
    ),
    Case(
        "a token that reports its outcome is spent: kept with the outcome, for a while, its attempt token gone",
        "http_handlers/spend_token",
        {"{p}tok": "1 0 abc1"},
        ["{p}tok", "{p}spent"],
        ["abc1", "0ff1ce", 86400],
        1,
        {"{p}tok": None, "{p}spent": "abc1 0ff1ce"},
        ttl={"{p}spent": "expires"},
    ),
    Case(
        "a token spent again (its twin spent it first) answers that it was not the first",
        "http_handlers/spend_token",
        {"{p}spent": "abc1 0ff1ce"},
        ["{p}tok", "{p}spent"],
        ["abc1", "0ff1ce", 86400],
        0,
        {"{p}tok": None, "{p}spent": "abc1 0ff1ce"},
        ttl={"{p}spent": "expires"},
    ),
    Case(
        "spending an attempt's token leaves a later attempt's token alone",
        "http_handlers/spend_token",
        {"{p}tok": "2 0 abc2"},
        ["{p}tok", "{p}spent"],
        ["abc1", "0ff1ce", 86400],
        0,
        {"{p}tok": "2 0 abc2", "{p}spent": "abc1 0ff1ce"},
        ttl={"{p}spent": "expires", "{p}tok": "persists"},
    ),
    Case(
        "before a delivery, the current attempt records the handler version and its token",
        "http_handlers/before_delivery",
        {"{p}job:j1": _HTTP_RUNNING},
        ["{p}job:j1", "{p}tok"],
        ["1", "3", "1 0 abc1", 600],
        1,
        {"{p}job:j1": {**_HTTP_RUNNING, "handlerVersion": "3"}, "{p}tok": "1 0 abc1"},
        ttl={"{p}tok": "expires"},
    ),
    Case(
        "a stale attempt's delivery records nothing",
        "http_handlers/before_delivery",
        {"{p}job:j1": {**_HTTP_RUNNING, "attempts": "2"}},
        ["{p}job:j1", "{p}tok"],
        ["1", "3", "1 0 abc1", 600],
        0,
        {"{p}tok": None},
    ),
]

FORGET_LAPSED = [
    Case(
        "lapsed jobTypes leave the directory, their policies with them; live ones stay",
        "store/forget_lapsed_job_types",
        {"{p}types": Z({"old": 900, "live": 2000}), "{p}policies": {"old": "{}", "live": "{}"}},
        ["{p}types", "{p}policies"],
        ["1000"],
        1,
        {"{p}types": Z({"live": 2000}), "{p}policies": {"live": "{}"}},
    ),
]

# the TTL (s), whose members ('own' / 'shared'), the members
ANNOUNCE_LIVE = [
    Case(
        "an announcement is live for its TTL by Redis' clock; lapsed ones go; the key expires with its last",
        "store/announce_live",
        {"{p}cap": Z({"old:1": 900, "w2:3": float(LATER)})},
        ["{p}cap"],
        ["60", "own", "w1:2"],
        1,
        {"{p}cap": Z({"w1:2": Soon(60), "w2:3": float(LATER)})},
        ttl={"{p}cap": "expires"},
    ),
    Case(
        "shared members in several sets; one announced live for longer by another worker keeps its expiry",
        "store/announce_live",
        {"{p}q1": Z({"a.b": float(LATER)})},
        ["{p}q1", "{p}q2"],
        ["60", "shared", "a.b", "c.d"],
        0,
        {"{p}q1": Z({"a.b": float(LATER), "c.d": Soon(60)}), "{p}q2": Z({"a.b": Soon(60), "c.d": Soon(60)})},
        ttl={"{p}q1": "expires", "{p}q2": "expires"},
    ),
    Case(
        "a worker's own member takes its new TTL, shorter or not",
        "store/announce_live",
        {"{p}cap": Z({"w1:2": float(LATER)})},
        ["{p}cap"],
        ["60", "own", "w1:2"],
        0,
        {"{p}cap": Z({"w1:2": Soon(60)})},
        ttl={"{p}cap": "expires"},
    ),
]

RELEASE = [
    Case(
        "the holder releases its lock",
        "store/release_lock",
        {"{p}lock": "tok"},
        ["{p}lock"],
        ["tok"],
        1,
        {"{p}lock": None},
    ),
    Case(
        "another holder's lock is kept",
        "store/release_lock",
        {"{p}lock": "other"},
        ["{p}lock"],
        ["tok"],
        0,
        {"{p}lock": "other"},
    ),
]

# KEYS: the tenant's index, its counts, watch, one window; then the
# job's own: its hash, its idempotency key, its broker list, unused (its hash).
_ADMIT_SHARED_KEYS = ["{p}index", "{p}counts", "{p}watch", "{p}window"]
#: A job's keys past its hash, idempotency key and broker list (ready set, dispatch keys, due
#: set, parked messages): unused by a job whose message is pushed, so its hash stands in.
_UNUSED = ["{p}job:j1"] * 10
ADMIT_KEYS = [*_ADMIT_SHARED_KEYS, "{p}job:j1", "{p}idem", "{p}list", *_UNUSED]
ADMIT_NO_IDEM_KEYS = [*_ADMIT_SHARED_KEYS, "{p}job:j1", "{p}job:j1", "{p}job:j1", *_UNUSED]
#: ADMIT_KEYS with two windows, w1 and w2, in place of the one.
_TWO_WINDOW_KEYS = [*_ADMIT_SHARED_KEYS[:3], "{p}w1", "{p}w2", *ADMIT_KEYS[4:]]
_FIELDS = ["state", "queued", "tenantId", "t1", "jobType", "a.b"]
#: The bytes of _FIELDS' fields and values, as the budget counts them.
_BYTES = sum(len(text) for text in _FIELDS)
_RECORD = {
    "state": "queued",
    "tenantId": "t1",
    "jobType": "a.b",
    "recordBytes": str(_BYTES),
    "storedBytes": str(_BYTES),
}


def _admit_header(
    *, max_pending: int = 5, budget: int = 10_000, jobs: int = 1, windows: tuple[int, ...] = (2, 60)
) -> list[Any]:
    # tenant, key TTL, max pending, job key prefix, n windows, index horizon (ms), storage budget,
    # retention (s), number of jobs, then (limit, expiry) of each window (one by default)
    return ["t1", 600, max_pending, "{p}job:", len(windows) // 2, 1000, budget, 3600, jobs, *windows]


def _admit_job(
    job_id: str = "j1",
    *,
    fingerprint: str = "fp",
    live: str = "1",
    message: str = "msg",
    watch_in: str = "60",
    fields: list[str] = _FIELDS,
) -> list[Any]:
    # job id, created ms, fingerprint, live, message, watch in (seconds), mode (pushed as it is, or
    # nothing), queue, ready prefix, job prefix, depth, priority, weight, park in (s): unused when
    # pushed; number of field entries, fields...
    mode = "push" if message else ""
    unused = ["", "", "", 0, 0, "1.0", "0.0"]
    return [job_id, 1234, fingerprint, live, message, watch_in, mode, *unused, len(fields), *fields]


def _admit_argv(
    *,
    fingerprint: str = "fp",
    live: str = "1",
    max_pending: int = 5,
    message: str = "msg",
    watch_in: str = "60",
    budget: int = 10_000,
    windows: tuple[int, ...] = (2, 60),
) -> list[Any]:
    return [
        *_admit_header(max_pending=max_pending, budget=budget, windows=windows),
        *_admit_job(fingerprint=fingerprint, live=live, message=message, watch_in=watch_in),
    ]


#: A window of 2 a minute with room for both slots: limit 2, remaining 2, reset 30 s (a slot
#: taken now comes back after 60 / 2 s: GCRA), no retry, not full.
EMPTY_WINDOW = [2, 2, "30", "0", "0"]
#: The same window with one slot just taken, back in 30 s.
TAKEN_ONE = [2, 1, "30", "0", "0"]
#: A retained bucket long past (its records all expired) and one far ahead of any clock.
_PAST, _AHEAD = 1, 99_999_999
ADMIT = [
    Case(
        "a new job is recorded, counted, indexed, keyed, pushed and takes a slot",
        "guards/admit",
        {"{p}counts": {"pending": "1"}},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", TAKEN_ONE],
        {
            "{p}job:j1": _RECORD,
            "{p}index": Z({"j1": 1234}),
            "{p}counts": {"pending": "2", "held": str(_BYTES), "total": "0", "newest": "1234"},
            "{p}idem": "fp j1",
            "{p}list": ["msg"],
            # watched: the sweep looks at it if nothing claims it in time
            "{p}watch": Z({"j1": ANY}),
            "{p}window": FromNow(30),
        },
        ttl={"{p}idem": "expires", "{p}window": "expires", "{p}job:j1": "persists"},
    ),
    Case(
        "a scheduled job without a key whose caller publishes is watched, nothing pushed",
        "guards/admit",
        {},
        ADMIT_NO_IDEM_KEYS,
        _admit_argv(fingerprint="", message="", watch_in="1500.5"),
        ["created", TAKEN_ONE],
        {
            "{p}job:j1": _RECORD,
            "{p}counts": {"pending": "1", "held": str(_BYTES), "total": "0", "newest": "1234"},
            "{p}watch": Z({"j1": ANY}),
            "{p}list": None,
            "{p}idem": None,
            "{p}window": FromNow(30),
        },
    ),
    Case(
        "the index's newest score is the one the tenant's counts keep: the job is placed after it",
        "guards/admit",
        # (an entry that left the index, such as an expired job's, leaves its score there)
        {"{p}index": Z({"a": 1000}), "{p}counts": {"newest": "1500"}},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", TAKEN_ONE],
        {"{p}index": Z({"a": 1000, "j1": 1500 + 1 / 1024}), "{p}counts": Having({"newest": repr(1500 + 1 / 1024)})},
    ),
    Case(
        "a refusal that finds retained buckets whose records all expired writes their drop back",
        "guards/admit",
        {"{p}counts": {"pending": "5", "total": "70", "oldest": str(_PAST), f"b{_PAST}": "70"}},
        ADMIT_KEYS,
        _admit_argv(max_pending=5),
        ["backlog", EMPTY_WINDOW, 5],
        {"{p}counts": Having({"pending": "5", "total": "0", f"b{_PAST}": None}), "{p}job:j1": None},
    ),
    Case(
        "index entries older than the horizon are trimmed as a job is created",
        "guards/admit",
        {"{p}index": Z({"old": 233, "edge": 234, "recent": 900}), "{p}counts": {"newest": "900"}},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", TAKEN_ONE],
        {"{p}index": Z({"edge": 234, "recent": 900, "j1": 1234})},
    ),
    Case(
        "the same call again (a retried timeout) answers created and changes nothing",
        "guards/admit",
        {"{p}job:j1": _RECORD, "{p}counts": {"pending": "1"}, "{p}list": ["msg"]},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", EMPTY_WINDOW],
        {"{p}job:j1": _RECORD, "{p}counts": {"pending": "1"}, "{p}list": ["msg"], "{p}window": None, "{p}idem": None},
    ),
    Case(
        "a known key with the same body gives back the stored job and consumes nothing",
        "guards/admit",
        {"{p}idem": "fp j0", "{p}job:j0": {**ID, "jobId": "j0", "state": "running"}},
        ADMIT_KEYS,
        _admit_argv(),
        ["replay", EMPTY_WINDOW, Record({**ID, "jobId": "j0", "state": "running"})],
        {"{p}job:j1": None, "{p}idem": "fp j0", "{p}window": None, "{p}counts": None, "{p}list": None},
    ),
    Case(
        "a known key with another body is a conflict naming the job",
        "guards/admit",
        {"{p}idem": "other j0", "{p}job:j0": {"state": "queued"}},
        ADMIT_KEYS,
        _admit_argv(),
        ["conflict", EMPTY_WINDOW, "j0"],
        {"{p}job:j1": None, "{p}idem": "other j0", "{p}window": None},
    ),
    Case(
        "a key whose job is gone is stale: dropped, and the job is created",
        "guards/admit",
        {"{p}idem": "fp j0"},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", TAKEN_ONE],
        {"{p}job:j1": _RECORD, "{p}idem": "fp j1"},
    ),
    Case(
        "a jobType no live worker announced is refused",
        "guards/admit",
        {},
        ADMIT_KEYS,
        _admit_argv(live="0"),
        ["unknown-type", EMPTY_WINDOW],
        {"{p}job:j1": None, "{p}idem": None, "{p}window": None, "{p}counts": None},
    ),
    Case(
        "a full window refuses and consumes nothing",
        "guards/admit",
        # both slots taken just now: the first comes back in 30 s
        {"{p}window": FromNow(60)},
        ADMIT_KEYS,
        _admit_argv(),
        ["rate-limited", [2, 0, About(30), About(30), "1"]],
        {"{p}job:j1": None, "{p}idem": None, "{p}window": FromNow(60), "{p}counts": None},
    ),
    Case(
        "a slot comes back a tau after it was taken: both taken 40 s ago, one is free again",
        "guards/admit",
        {"{p}window": FromNow(20)},
        ADMIT_KEYS,
        _admit_argv(),
        ["created", [2, 0, About(20), "0", "0"]],
        {"{p}job:j1": _RECORD, "{p}window": FromNow(50)},
    ),
    Case(
        "with two windows, a full one refuses and the other is not consumed",
        "guards/admit",
        {"{p}w2": FromNow(3600)},
        _TWO_WINDOW_KEYS,
        _admit_argv(windows=(100, 60, 1, 3600)),
        ["rate-limited", [1, 0, About(3600), About(3600), "1"]],
        {"{p}job:j1": None, "{p}w1": None, "{p}w2": FromNow(3600), "{p}counts": None},
    ),
    Case(
        "with two windows with room, one submission is counted in each",
        "guards/admit",
        {"{p}w2": FromNow(1800)},
        _TWO_WINDOW_KEYS,
        _admit_argv(windows=(100, 60, 2, 3600)),
        # the tighter window is reported (its last slot just taken); it frees one in 1800 s
        ["created", [2, 0, About(1800), "0", "0"]],
        {"{p}job:j1": _RECORD, "{p}w1": FromNow(0.6), "{p}w2": FromNow(3600)},
        ttl={"{p}w1": "expires", "{p}w2": "expires"},
    ),
    Case(
        "a full backlog refuses with the pending count and consumes nothing",
        "guards/admit",
        {"{p}counts": {"pending": "5"}},
        ADMIT_KEYS,
        _admit_argv(max_pending=5),
        ["backlog", EMPTY_WINDOW, 5],
        {"{p}job:j1": None, "{p}idem": None, "{p}window": None, "{p}counts": {"pending": "5"}},
    ),
]

ADMIT += [
    Case(
        "a record past the storage budget is refused with the bytes held and consumes nothing",
        "guards/admit",
        {"{p}counts": {"held": "9980"}},
        ADMIT_KEYS,
        _admit_argv(budget=10_000),
        ["storage", EMPTY_WINDOW, 9980, _BYTES, 0],
        {"{p}job:j1": None, "{p}idem": None, "{p}window": None, "{p}counts": {"held": "9980"}},
    ),
    Case(
        "retained bytes count too, and the refusal says when some are released",
        "guards/admit",
        {"{p}counts": {"held": "5000", "total": "4980", "oldest": str(_AHEAD), f"b{_AHEAD}": "4980"}},
        ADMIT_KEYS,
        _admit_argv(budget=10_000),
        ["storage", EMPTY_WINDOW, 9980, _BYTES, ANY],
        {"{p}job:j1": None, "{p}window": None},
    ),
    Case(
        "a bucket whose records have all expired leaves the count, and the job fits",
        "guards/admit",
        {"{p}counts": {"total": "9990", "oldest": str(_PAST), f"b{_PAST}": "9990"}},
        ADMIT_KEYS,
        _admit_argv(budget=10_000),
        ["created", TAKEN_ONE],
        {"{p}counts": Having({"total": "0", f"b{_PAST}": None, "held": str(_BYTES)})},
    ),
]


def _batch_keys(*idem: str) -> list[str]:
    """KEYS of a batch of jobs j1, j2, ... whose idempotency keys are ``idem`` ('' = none)."""
    found = list(_ADMIT_SHARED_KEYS)
    for n, key in enumerate(idem, start=1):
        job = f"{{p}}job:j{n}"
        found += [job, key or job, "{p}list", *[job] * 10]
    return found


#: j2's record as stored, with the fields a replay's reply needs (Job.from_redis).
_J2_FIELDS = [*_FIELDS, "jobId", "j2"]
_J2_RECORD = {
    "state": "queued",
    "tenantId": "t1",
    "jobType": "a.b",
    "jobId": "j2",
    "recordBytes": str(_BYTES + 7),
    "storedBytes": str(_BYTES + 7),
}
ADMIT_BATCH = [
    Case(
        "jobs in order: each takes a slot, the one past the window is refused and consumes nothing",
        "guards/admit_batch",
        {},
        _batch_keys("", "{p}idem", "{p}idem3"),
        [
            *_admit_header(jobs=3),
            *_admit_job("j1", fingerprint="", message="m1"),
            *_admit_job("j2", fingerprint="f2", message="m2"),
            *_admit_job("j3", fingerprint="f3", message="m3"),
        ],
        # one run, one clock: the second sees the first's slot (back in 30 s), the third both
        [
            ["created", TAKEN_ONE],
            ["created", [2, 0, "30", "0", "0"]],
            ["rate-limited", [2, 0, "30", "30", "1"]],
        ],
        {
            "{p}job:j1": _RECORD,
            "{p}job:j2": _RECORD,
            "{p}job:j3": None,
            "{p}idem": "f2 j2",
            "{p}list": ["m2", "m1"],
            "{p}counts": Having({"pending": "2", "held": str(2 * _BYTES)}),
            "{p}window": FromNow(60),
        },
    ),
    Case(
        "two jobs with one key: the second replays the first; a refused job between changes nothing",
        "guards/admit_batch",
        {},
        _batch_keys("", "{p}idem", "{p}idem"),
        [
            *_admit_header(jobs=3),
            *_admit_job("j1", fingerprint="", live="0"),
            *_admit_job("j2", fingerprint="fp", fields=_J2_FIELDS),
            *_admit_job("j3", fingerprint="fp", fields=_J2_FIELDS),
        ],
        [["unknown-type", EMPTY_WINDOW], ["created", TAKEN_ONE], ["replay", ANY, Record(_J2_RECORD)]],
        {
            "{p}job:j1": None,
            "{p}job:j3": None,
            "{p}counts": Having({"pending": "1", "newest": "1234"}),
            "{p}list": ["msg"],
            "{p}window": FromNow(30),
        },
    ),
    Case(
        "run again (a retried timeout): stored jobs answer created, nothing is counted twice",
        "guards/admit_batch",
        {"{p}job:j1": _RECORD, "{p}counts": {"pending": "1", "held": str(_BYTES)}, "{p}list": ["msg"]},
        _batch_keys("", ""),
        [*_admit_header(jobs=2), *_admit_job("j1", fingerprint=""), *_admit_job("j2", fingerprint="")],
        [["created", EMPTY_WINDOW], ["created", TAKEN_ONE]],
        {"{p}counts": Having({"pending": "2", "held": str(2 * _BYTES)}), "{p}list": ["msg", "msg"]},
    ),
    Case(
        "a job past the storage budget is refused on its own; a smaller one after it fits",
        "guards/admit_batch",
        {"{p}counts": {"held": "9980"}},
        _batch_keys("", ""),
        [
            *_admit_header(jobs=2, budget=10_000),
            *_admit_job("j1", fingerprint=""),
            "j2",
            1234,
            "",
            "1",
            "msg",
            "60",
            "push",
            "",
            "",
            "",
            0,
            0,
            "1.0",
            "0.0",
            2,
            "state",
            "queued",
        ],
        [["storage", EMPTY_WINDOW, 9980, _BYTES, 0], ["created", TAKEN_ONE]],
        {"{p}job:j1": None, "{p}job:j2": {"state": "queued", "recordBytes": "11", "storedBytes": "11"}},
    ),
]

READMIT_KEYS = ["{p}job:j1", "{p}dead", "{p}counts", "{p}watch", "{p}window"]
_DEAD = {
    **ID,
    "state": "dead",
    "attempts": "3",
    "cycle": "1",
    "result": "null",
    "error": "{}",
    "startedAt": T,
    "finishedAt": T,
    "cancelRequested": "1",
}
_QUEUED_AGAIN = {**ID, "state": "queued", "attempts": "0", "cycle": "2", "error": "{}", "readyAt": ANY}
_QUEUED_BEFORE = {**_QUEUED_AGAIN, "readyAt": "1000.000000"}


def _readmit_argv(*, cycle: int = 1, max_pending: int = 5) -> list[Any]:
    # job id, cycle read, check in (s), max pending, n windows, (limit, expiry)
    return ["j1", cycle, 60, max_pending, 1, 2, 60]


READMIT = [
    Case(
        "a dead letter is queued again for a new cycle, counted, watched and takes a slot",
        "guards/readmit",
        {"{p}job:j1": _DEAD, "{p}dead": Z({"j1": 1, "j0": 1}), "{p}counts": {"pending": "0"}},
        READMIT_KEYS,
        _readmit_argv(),
        ["replayed", TAKEN_ONE, Record(_QUEUED_AGAIN)],
        {
            "{p}job:j1": _QUEUED_AGAIN,
            "{p}dead": Z({"j0": 1}),
            "{p}counts": {"pending": "1"},
            # watched like any queued job: checked a minute from now (Redis' clock)
            "{p}watch": Z({"j1": ANY}),
            "{p}window": FromNow(30),
        },
    ),
    Case(
        "the same call again (a retried timeout) answers replayed and changes nothing",
        "guards/readmit",
        {"{p}job:j1": _QUEUED_BEFORE, "{p}dead": Z({"j0": 1}), "{p}counts": {"pending": "1"}},
        READMIT_KEYS,
        _readmit_argv(),
        ["replayed", EMPTY_WINDOW, Record(_QUEUED_BEFORE)],
        {"{p}job:j1": _QUEUED_BEFORE, "{p}counts": {"pending": "1"}, "{p}watch": None, "{p}window": None},
    ),
    Case(
        "a job that is not dead is not replayed",
        "guards/readmit",
        {"{p}job:j1": {**_DEAD, "state": "succeeded"}, "{p}dead": Z({"j1": 1})},
        READMIT_KEYS,
        _readmit_argv(),
        ["missing", EMPTY_WINDOW],
        {"{p}job:j1": {**_DEAD, "state": "succeeded"}, "{p}dead": Z({"j1": 1}), "{p}counts": None},
    ),
    Case(
        "a dead job outside these dead letters (another tenant's) is not replayed",
        "guards/readmit",
        {"{p}job:j1": _DEAD},
        READMIT_KEYS,
        _readmit_argv(),
        ["missing", EMPTY_WINDOW],
        {"{p}job:j1": _DEAD, "{p}counts": None},
        ttl={"{p}job:j1": "persists"},
    ),
    Case(
        "a full rate window refuses; nothing changes",
        "guards/readmit",
        {"{p}job:j1": _DEAD, "{p}dead": Z({"j1": 1}), "{p}window": FromNow(60)},
        READMIT_KEYS,
        _readmit_argv(),
        ["rate-limited", [2, 0, About(30), About(30), "1"]],
        {
            "{p}job:j1": _DEAD,
            "{p}dead": Z({"j1": 1}),
            "{p}counts": None,
            "{p}watch": None,
            "{p}window": FromNow(60),
        },
    ),
    Case(
        "a full backlog refuses with the pending count; nothing changes",
        "guards/readmit",
        {"{p}job:j1": _DEAD, "{p}dead": Z({"j1": 1}), "{p}counts": {"pending": "5"}},
        READMIT_KEYS,
        _readmit_argv(max_pending=5),
        ["backlog", EMPTY_WINDOW, 5],
        {"{p}job:j1": _DEAD, "{p}dead": Z({"j1": 1}), "{p}counts": {"pending": "5"}, "{p}window": None},
    ),
]

RATE_STATUS = [
    Case(
        "an empty window has all its room",
        "guards/rate_status",
        {},
        ["{p}window"],
        [1, 2, 60],
        EMPTY_WINDOW,
        {"{p}window": None},
    ),
    Case(
        "a half-used window reports what is left and consumes nothing",
        "guards/rate_status",
        {"{p}window": FromNow(20)},
        ["{p}window"],
        [1, 2, 60],
        [2, 1, About(20), "0", "0"],
        {"{p}window": FromNow(20)},
    ),
    Case(
        "used slots are the debt in taus, rounded up: 31 s of 30 s taus fill 2 slots for 1 s more",
        "guards/rate_status",
        {"{p}window": FromNow(31)},
        ["{p}window"],
        [1, 2, 60],
        [2, 0, About(1), About(1), "1"],
        {"{p}window": FromNow(31)},
    ),
    Case(
        "the tightest of two windows is reported; a full one gives its retry-after",
        "guards/rate_status",
        {"{p}w2": FromNow(3000)},
        ["{p}w1", "{p}w2"],
        [2, 5, 60, 1, 3600],
        [1, 0, About(3000), About(3000), "1"],
        {"{p}w1": None, "{p}w2": FromNow(3000)},
    ),
]

# holder, now, grace (s), job key prefix, max per set...
ACQUIRE = [
    Case(
        "free slots are taken in every set until the grace ends",
        "guards/acquire_slots",
        {},
        ["{p}s1", "{p}s2"],
        ["j1|b", "1000", "10", "{p}job:", 1, 1],
        0,
        {"{p}s1": Z({"j1|b": 1010}), "{p}s2": Z({"j1|b": 1010})},
    ),
    Case(
        "a holder in its grace fills the set",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|a": 2000})},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        1,
        {"{p}s1": Z({"j0|a": 2000})},
    ),
    Case(
        "a holder past its grace whose job runs under a live lease still counts",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|a": 500}), "{p}job:j0": {"state": "running", "leaseUntil": "2000"}},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        1,
        {"{p}s1": Z({"j0|a": 500})},
    ),
    Case(
        "a holder past its grace whose job ended is dropped, freeing its slot",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|a": 500}), "{p}job:j0": {"state": "succeeded"}},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        0,
        {"{p}s1": Z({"j1|b": 1010})},
    ),
    Case(
        "a holder past its grace whose lease lapsed is dropped",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|a": 500, "j2|c": 1500}), "{p}job:j0": {"state": "running", "leaseUntil": "999"}},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 2],
        0,
        {"{p}s1": Z({"j2|c": 1500, "j1|b": 1010})},
    ),
    Case(
        "a slot handed to a job that ended before its gate took it is dropped, freeing the slot",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|h": 2000}), "{p}job:j0": {"state": "succeeded"}},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        0,
        {"{p}s1": Z({"j1|b": 1010})},
    ),
    Case(
        "a slot handed to a job still on its way to a gate fills the set",
        "guards/acquire_slots",
        {"{p}s1": Z({"j0|h": 2000}), "{p}job:j0": {"state": "queued"}},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        1,
        {"{p}s1": Z({"j0|h": 2000})},
    ),
    Case(
        "the first full set is named and no set is taken",
        "guards/acquire_slots",
        {"{p}s2": Z({"j0|a": 2000})},
        ["{p}s1", "{p}s2"],
        ["j1|b", "1000", "10", "{p}job:", 2, 1],
        2,
        {"{p}s1": None, "{p}s2": Z({"j0|a": 2000})},
    ),
]

# slot set, its parked set, its turns, the parked messages, the slot sets with parked jobs
PARK_KEYS = ["{p}s1", "{p}parked:s1", "{p}turns:s1", "{p}pmsg", "{p}plimits"]
PARKING = [
    Case(
        "a full set parks the job at its tenant's next turn, with the message that starts it again",
        "guards/park_slots",
        {
            "{p}s1": Z({"j0|a": 2000}),
            "{p}parked:s1": Z({"j8": 4, "j9": 5}),
            "{p}turns:s1": {"t:acme": "5", "released": "3"},
        },
        PARK_KEYS,
        ["j1|b", "1000", "10", "{p}job:", 1, 1, "j1", "acme", "{p}q", "msg"],
        1,
        {
            "{p}s1": Z({"j0|a": 2000}),
            "{p}parked:s1": Z({"j8": 4, "j9": 5, "j1": 6}),
            "{p}turns:s1": {"t:acme": "6", "released": "3"},
            "{p}pmsg": {"j1": "{p}q\nmsg"},
            "{p}plimits": {"{p}s1": "1"},
        },
    ),
    Case(
        "another tenant's job parks at the next turn to be handed a slot, ahead of a flood's later jobs",
        "guards/park_slots",
        {
            "{p}s1": Z({"j0|a": 2000}),
            "{p}parked:s1": Z({"j8": 4, "j9": 5}),
            "{p}turns:s1": {"t:acme": "5", "released": "3"},
        },
        PARK_KEYS,
        ["j1|b", "1000", "10", "{p}job:", 1, 1, "j1", "globex", "{p}q", "msg"],
        1,
        {
            "{p}parked:s1": Z({"j1": 4, "j8": 4, "j9": 5}),
            "{p}turns:s1": {"t:acme": "5", "t:globex": "4", "released": "3"},
        },
    ),
    Case(
        "a job parked already keeps its turn",
        "guards/park_slots",
        {"{p}s1": Z({"j0|a": 2000}), "{p}parked:s1": Z({"j1": 2}), "{p}turns:s1": {"t:acme": "7"}},
        PARK_KEYS,
        ["j1|b", "1000", "10", "{p}job:", 1, 1, "j1", "acme", "{p}q", "msg"],
        1,
        {"{p}parked:s1": Z({"j1": 2}), "{p}turns:s1": {"t:acme": "7"}},
    ),
    Case(
        "a slot freed since acquire_slots looked is taken, nothing parked",
        "guards/park_slots",
        {"{p}s1": Z({"j0|a": 500}), "{p}job:j0": {"state": "succeeded"}},
        PARK_KEYS,
        ["j1|b", "1000", "10", "{p}job:", 1, 1, "j1", "acme", "{p}q", "msg"],
        0,
        {"{p}s1": Z({"j1|b": 1010}), "{p}parked:s1": None, "{p}turns:s1": None, "{p}pmsg": None},
    ),
    Case(
        "a release hands the freed slot to the first parked job and pushes its message",
        "guards/release_slots",
        {
            "{p}s1": Z({"j0|a": 2000}),
            "{p}parked:s1": Z({"j1": 3, "j2": 4}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}plimits": {"{p}s1": "1"},
            "{p}job:j1": {"state": "queued"},
            "{p}job:j2": {"state": "queued"},
        },
        PARK_KEYS,
        ["j0|a", "1000", "10", "{p}job:", 1, 1],
        [1],
        {
            "{p}s1": Z({"j1|h": 1010}),
            "{p}parked:s1": Z({"j2": 4}),
            "{p}turns:s1": {"released": "3"},
            "{p}pmsg": {"j2": "{p}q\nm2"},
            "{p}q": ["m1"],
            "{p}plimits": {"{p}s1": "1"},
        },
    ),
    Case(
        "every hundredth turn handed a slot forgets the tenants whose turns are all past",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 100, "j2": 101}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}turns:s1": {"t:acme": "101", "t:globex": "100", "t:initech": "57", "released": "99"},
            "{p}job:j1": {"state": "queued"},
            "{p}job:j2": {"state": "queued"},
        },
        PARK_KEYS,
        ["", "1000", "10", "{p}job:", 1, 1],
        [1],
        {"{p}parked:s1": Z({"j2": 101}), "{p}turns:s1": {"t:acme": "101", "released": "100"}},
    ),
    Case(
        "a job handed a freed slot is next checked a queued check later, never earlier",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 3, "j2": 4, "j3": 5}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2", "j3": "{p}q\nm3"},
            "{p}plimits": {"{p}s1": "3"},
            "{p}job:j1": {"state": "queued"},
            "{p}job:j2": {"state": "queued"},
            "{p}job:j3": {"state": "queued"},
            "{p}watch": Z({"j1": 5, "j2": float(LATER)}),
        },
        [*PARK_KEYS, "{p}watch"],
        ["", "1000", "10", "{p}job:", 1, 3, "60"],
        [3],
        {"{p}watch": Z({"j1": Soon(60), "j2": float(LATER)}), "{p}q": ["m3", "m2", "m1"]},
    ),
    *[
        Case(
            f"a {state} job released when due and parked on the limit is handed the freed slot like a queued one",
            "guards/release_slots",
            {
                "{p}s1": Z({"j0|a": 2000}),
                "{p}parked:s1": Z({"j1": 3, "j2": 4}),
                "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
                "{p}plimits": {"{p}s1": "1"},
                "{p}job:j1": {"state": state},
                "{p}job:j2": {"state": "queued"},
            },
            PARK_KEYS,
            ["j0|a", "1000", "10", "{p}job:", 1, 1],
            [1],
            {"{p}s1": Z({"j1|h": 1010}), "{p}parked:s1": Z({"j2": 4}), "{p}q": ["m1"]},
        )
        for state in ("retrying", "scheduled")
    ],
    Case(
        "a copy of a lost attempt (running, its lease lapsed) is handed the freed slot; its deadline stays",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 3, "j2": 4}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}plimits": {"{p}s1": "1"},
            "{p}job:j1": {"state": "running", "leaseUntil": "990"},
            "{p}job:j2": {"state": "queued"},
            "{p}watch": Z({"j1": 990, "j2": 5}),
        },
        [*PARK_KEYS, "{p}watch"],
        ["", "1000", "10", "{p}job:", 1, 1, "60"],
        [1],
        {"{p}s1": Z({"j1|h": 1010}), "{p}parked:s1": Z({"j2": 4}), "{p}q": ["m1"], "{p}watch": Z({"j1": 990, "j2": 5})},
    ),
    Case(
        "a copy of an attempt still running under a live lease is dropped; the next parked job gets the slot",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 3, "j2": 4}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}plimits": {"{p}s1": "1"},
            "{p}job:j1": {"state": "running", "leaseUntil": "1030"},
            "{p}job:j2": {"state": "queued"},
        },
        PARK_KEYS,
        ["", "1000", "10", "{p}job:", 1, 1],
        [1],
        {"{p}s1": Z({"j2|h": 1010}), "{p}parked:s1": None, "{p}pmsg": None, "{p}q": ["m2"]},
    ),
    Case(
        "a cancelled parked job is dropped; an empty parked set leaves the registry, its turns deleted",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 3}),
            "{p}turns:s1": {"t:acme": "3", "released": "2"},
            "{p}pmsg": {"j1": "{p}q\nm1"},
            "{p}plimits": {"{p}s1": "1"},
            "{p}job:j1": {"state": "cancelled"},
        },
        PARK_KEYS,
        ["", "1000", "10", "{p}job:", 1, 1],
        [0],
        {
            "{p}s1": None,
            "{p}parked:s1": None,
            "{p}turns:s1": None,
            "{p}pmsg": None,
            "{p}q": None,
            "{p}plimits": None,
        },
    ),
    Case(
        "a job parked with no broker list is handed the slot and given back for the caller to publish",
        "guards/release_slots",
        {
            "{p}parked:s1": Z({"j1": 3, "j2": 4}),
            "{p}pmsg": {"j1": "\n", "j2": "\n"},
            "{p}plimits": {"{p}s1": "1"},
            "{p}job:j1": {"state": "queued"},
            "{p}job:j2": {"state": "queued"},
        },
        PARK_KEYS,
        ["", "1000", "10", "{p}job:", 1, 1],
        [1, "j1"],
        {"{p}s1": Z({"j1|h": 1010}), "{p}parked:s1": Z({"j2": 4}), "{p}pmsg": {"j2": "\n"}},
    ),
    Case(
        "a slot handed over is the job's own when its message comes back",
        "guards/acquire_slots",
        {"{p}s1": Z({"j1|h": 1010})},
        ["{p}s1"],
        ["j1|b", "1000", "10", "{p}job:", 1],
        0,
        {"{p}s1": Z({"j1|b": 1010})},
    ),
    Case(
        "a job parked until a rate window allows",
        "guards/park_due",
        {},
        ["{p}due", "{p}pmsg"],
        ["j1", "30", "{p}q", "msg"],
        ANY,
        {"{p}due": Z({"j1": ANY}), "{p}pmsg": {"j1": "{p}q\nmsg"}},
    ),
    Case(
        "a copy of a job parked already leaves it as it is ('nx')",
        "guards/park_due",
        {"{p}due": Z({"j1": 5}), "{p}pmsg": {"j1": "{p}q\nmsg"}},
        ["{p}due", "{p}pmsg"],
        ["j1", "30", "{p}q", "copy", "nx"],
        "0",
        {"{p}due": Z({"j1": 5}), "{p}pmsg": {"j1": "{p}q\nmsg"}},
    ),
    Case(
        "a copy of a job not parked parks it ('nx')",
        "guards/park_due",
        {},
        ["{p}due", "{p}pmsg"],
        ["j1", "30", "{p}q", "copy", "nx"],
        ANY,
        {"{p}due": Z({"j1": ANY}), "{p}pmsg": {"j1": "{p}q\ncopy"}},
    ),
    Case(
        "the due parked jobs go back on their queues, the others wait",
        "guards/release_due",
        {"{p}due": Z({"j1": 5, "j2": float(LATER)}), "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"}},
        ["{p}due", "{p}pmsg"],
        [100],
        [1],
        {"{p}due": Z({"j2": float(LATER)}), "{p}pmsg": {"j2": "{p}q\nm2"}, "{p}q": ["m1"]},
    ),
    Case(
        "a due job parked with no broker list is given back for the caller to publish",
        "guards/release_due",
        {"{p}due": Z({"j1": 5, "j2": 6}), "{p}pmsg": {"j1": "\n", "j2": "{p}q\nm2"}},
        ["{p}due", "{p}pmsg"],
        [100],
        [2, "j1"],
        {"{p}due": None, "{p}pmsg": None, "{p}q": ["m2"]},
    ),
    Case(
        "a released job is next checked a queued check after its release, never earlier",
        "guards/release_due",
        {
            "{p}due": Z({"j1": 5, "j2": 6, "j3": 7, "j4": float(LATER)}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "\n", "j3": "{p}q\nm3", "j4": "{p}q\nm4"},
            "{p}watch": Z({"j1": 5, "j2": 6, "j3": float(LATER), "j4": 8}),
        },
        ["{p}due", "{p}pmsg", "{p}watch"],
        [100, "60"],
        [3, "j2"],
        {
            "{p}watch": Z({"j1": Soon(60), "j2": Soon(60), "j3": float(LATER), "j4": 8}),
            "{p}q": ["m3", "m1"],
        },
    ),
]

# release_due's key shapes for a release into the fair order (prefixed as the cases' keys).
_FAIR_RELEASE = ["{p}job:", "{p}ready:", ":", "{p}active:", "{p}dispatch:", "{p}queues", "{p}tenant:", ":counts"]
RELEASE_DUE_FAIR = [
    Case(
        "a due job released into the fair order waits in its tenant's ready set, its message in its record",
        "guards/release_due",
        {
            "{p}due": Z({"j1": 5, "j2": 6}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}job:j1": {"state": "scheduled", "queue": "q", "tenantId": "t1", "priority": "7"},
            "{p}job:j2": {"state": "cancelled", "queue": "q", "tenantId": "t1", "priority": "5"},
            "{p}tenant:t1:counts": {"seq": "41"},
            "{p}dispatch:q": {"v": "3"},
        },
        ["{p}due", "{p}pmsg"],
        [100, "0", *_FAIR_RELEASE],
        [2],
        {
            "{p}due": None,
            "{p}pmsg": None,
            "{p}q": None,
            "{p}job:j1": {"state": "scheduled", "queue": "q", "tenantId": "t1", "priority": "7", "message": "m1"},
            "{p}job:j2": {"state": "cancelled", "queue": "q", "tenantId": "t1", "priority": "5"},
            "{p}ready:q:t1": Z({"j1": 2e15 + 42}),
            "{p}active:q": Z({"t1": 3}),
            "{p}dispatch:q": {"v": "3", "w:t1": "1"},
            "{p}queues": {"q"},
            "{p}tenant:t1:counts": {"seq": "42"},
        },
    ),
    Case(
        "a running job whose lease lapsed, parked due now by the sweep, waits in its tenant's ready set, "
        "its deadline the sweep's (a queued job released with it gets a queued check)",
        "guards/release_due",
        {
            "{p}due": Z({"j1": 5, "j2": 6}),
            "{p}pmsg": {"j1": "{p}q\nm1", "j2": "{p}q\nm2"},
            "{p}job:j1": {"state": "running", "leaseUntil": "900", "queue": "q", "tenantId": "t1", "priority": "9"},
            "{p}job:j2": {"state": "queued", "queue": "q", "tenantId": "t1", "priority": "5"},
            "{p}tenant:t1:counts": {"seq": "1"},
            "{p}watch": Z({"j1": 930, "j2": 7}),
        },
        ["{p}due", "{p}pmsg", "{p}watch"],
        [100, "60", *_FAIR_RELEASE],
        [2],
        {
            "{p}q": None,
            "{p}job:j1": Having({"state": "running", "message": "m1"}),
            "{p}ready:q:t1": Z({"j1": 2, "j2": 4e15 + 3}),
            "{p}active:q": Z({"t1": 0}),
            "{p}watch": Z({"j1": 930, "j2": Soon(60)}),
        },
    ),
    Case(
        "a released copy of a running job (no broker list) leaves its deadline, the lease, alone",
        "guards/release_due",
        {
            "{p}due": Z({"j1": 5, "j2": 6}),
            "{p}pmsg": {"j1": "\n", "j2": "\n"},
            "{p}job:j1": {"state": "running", "queue": "q", "tenantId": "t1"},
            "{p}job:j2": {"state": "queued", "queue": "q", "tenantId": "t1"},
            # j1's lease lapses at 5: its worker is gone, the sweep must find it now
            "{p}watch": Z({"j1": 5, "j2": 6}),
        },
        ["{p}due", "{p}pmsg", "{p}watch"],
        [100, "60", *_FAIR_RELEASE],
        [2, "j1", "j2"],
        {"{p}due": None, "{p}pmsg": None, "{p}watch": Z({"j1": 5, "j2": Soon(60)})},
    ),
]

# The dispatcher of queue q: active, state, queues, its 4 lists (kombu steps 0, 3, 6, 9).
DISPATCH_KEYS = ["{p}active", "{p}state", "{p}queues", "{p}l0", "{p}l3", "{p}l6", "{p}l9"]
# queue, ready prefix, job prefix, depth
DISPATCH_ARGV = ["q", "{p}ready:", "{p}job:", "2"]
QUEUED = {"state": "queued"}
DISPATCH = [
    Case(
        "the tenant with the lowest virtual time gives its best job; weights advance it",
        "store/dispatch",
        {
            "{p}active": Z({"a": 3, "b": 1}),
            "{p}state": {"w:a": "1", "w:b": "0.5"},
            "{p}ready:a": Z({"ja": 4e15 + 1}),
            "{p}ready:b": Z({"jb1": 4e15 + 2, "jb2": 0 * 1e15 + 3}),
            # a waiting job's message is kept in its record
            "{p}job:ja": {**QUEUED, "message": "ma"},
            "{p}job:jb1": {**QUEUED, "message": "mb1"},
            "{p}job:jb2": {**QUEUED, "message": "mb2"},
            "{p}queues": {"q"},
        },
        DISPATCH_KEYS,
        DISPATCH_ARGV,
        2,
        {
            # b's priority-9 job first, then a (b's 1 + 1/0.5 = 3 ties a's 3: 'a' < 'b'), in that
            # order onto one list (LPUSH; workers take from the right)
            "{p}l0": ["ma", "mb2"],
            "{p}active": Z({"b": 3}),
            "{p}ready:a": None,
            "{p}ready:b": Z({"jb1": 4e15 + 2}),
            # the dispatched jobs' messages leave their records
            "{p}job:ja": QUEUED,
            "{p}job:jb1": {**QUEUED, "message": "mb1"},
            "{p}job:jb2": QUEUED,
            "{p}state": {"w:b": "0.5", "v": "3"},
        },
    ),
    Case(
        "a cancelled job is dropped with its message; an idle queue leaves nothing behind",
        "store/dispatch",
        {
            "{p}active": Z({"a": 0}),
            "{p}state": {"w:a": "1"},
            "{p}ready:a": Z({"ja": 4e15 + 1}),
            "{p}job:ja": {"state": "cancelled", "message": "ma"},
            "{p}queues": {"q"},
        },
        DISPATCH_KEYS,
        DISPATCH_ARGV,
        0,
        {
            "{p}active": None,
            "{p}state": None,
            "{p}job:ja": {"state": "cancelled"},
            "{p}queues": None,
            "{p}l0": None,
        },
    ),
    Case(
        "a running job whose lease lapsed (recovered by the sweep) is dispatched; one whose lease holds is dropped",
        "store/dispatch",
        {
            "{p}active": Z({"a": 0, "b": 0.5}),
            "{p}state": {"w:a": "1", "w:b": "1"},
            "{p}ready:a": Z({"ja": 4e15 + 1}),
            "{p}ready:b": Z({"jb": 4e15 + 2}),
            "{p}job:ja": {"state": "running", "leaseUntil": "900", "message": "ma"},
            "{p}job:jb": {"state": "running", "leaseUntil": LATER, "message": "mb"},
            "{p}queues": {"q"},
        },
        DISPATCH_KEYS,
        DISPATCH_ARGV,
        1,
        {
            "{p}l0": ["ma"],
            "{p}job:ja": {"state": "running", "leaseUntil": "900"},
            "{p}job:jb": {"state": "running", "leaseUntil": LATER},
            "{p}active": None,
        },
    ),
    Case(
        "a listed queue whose tenants all left is unlisted and its state goes",
        "store/dispatch",
        {"{p}state": {"v": "5"}, "{p}queues": {"q", "other"}},
        DISPATCH_KEYS,
        DISPATCH_ARGV,
        0,
        {"{p}state": None, "{p}queues": {"other"}, "{p}l0": None},
    ),
    Case(
        "a full queue is left alone",
        "store/dispatch",
        {"{p}active": Z({"a": 0}), "{p}ready:a": Z({"ja": 4e15 + 1}), "{p}l3": ["m1", "m2"]},
        DISPATCH_KEYS,
        DISPATCH_ARGV,
        0,
        {"{p}ready:a": Z({"ja": 4e15 + 1})},
    ),
]
DISPATCH_POP = [
    Case(
        "without broker lists, the next jobs in fair order are taken for the caller to publish",
        "store/dispatch_pop",
        {
            "{p}active": Z({"a": 0, "b": 0}),
            "{p}ready:a": Z({"ja1": 4e15 + 1, "ja2": 4e15 + 3}),
            "{p}ready:b": Z({"jb": 4e15 + 2}),
            "{p}job:ja1": QUEUED,
            "{p}job:ja2": QUEUED,
            "{p}job:jb": QUEUED,
            "{p}queues": {"q"},
        },
        DISPATCH_KEYS[:3],
        [*DISPATCH_ARGV[:3], 2],
        ["ja1", "jb"],
        {"{p}ready:a": Z({"ja2": 4e15 + 3}), "{p}ready:b": None, "{p}active": Z({"a": 1}), "{p}queues": {"q"}},
    ),
]
# admit with the job's message placed: its hash, no idempotency key, its broker list, its ready
# set, the queue's dispatch keys, the due set and the parked messages
PLACED_KEYS = [
    *_ADMIT_SHARED_KEYS,
    *["{p}job:j1", "{p}job:j1", "{p}l0", "{p}ready:t1"],
    *DISPATCH_KEYS,
    *["{p}due", "{p}parked"],
]


def _placed_argv(mode: str, *, message: str = "msg", park_in: str = "0.0") -> list[Any]:
    job = _admit_job(fingerprint="", message=message)
    # mode, queue, ready prefix, job prefix, depth, priority 5, weight 2, park in (s)
    job[6:14] = [mode, *DISPATCH_ARGV, "5", "2.0", park_in]
    return [*_admit_header(), *job]


ADMIT_PLACES = [
    Case(
        "a job due now on a short queue is dispatched in the same run: onto the list, nothing left waiting",
        "guards/admit",
        {},
        PLACED_KEYS,
        _placed_argv("enqueue"),
        ["created", TAKEN_ONE],
        {
            "{p}job:j1": _RECORD,
            "{p}l0": ["msg"],
            "{p}ready:t1": None,
            "{p}active": None,
            "{p}state": None,
            "{p}queues": None,
            "{p}due": None,
        },
    ),
    Case(
        "a job due now behind a full queue waits in its ready set, its tenant active at the last virtual time",
        "guards/admit",
        {"{p}l0": ["m1", "m2"], "{p}state": {"v": "7"}, "{p}counts": {"seq": "4"}},
        PLACED_KEYS,
        _placed_argv("enqueue"),
        ["created", TAKEN_ONE],
        {
            "{p}l0": ["m1", "m2"],
            # after the tenant's earlier arrivals (its counts' seq)
            "{p}ready:t1": Z({"j1": 4e15 + 5}),
            "{p}counts": Having({"seq": "5", "pending": "1"}),
            "{p}active": Z({"t1": 7}),
            "{p}state": {"v": "7", "w:t1": "2.0"},
            # its message waits in its record
            "{p}job:j1": {**_RECORD, "message": "msg"},
            "{p}queues": {"q"},
        },
    ),
    Case(
        "messages on the later priority lists (taken after the first) do not hold a job due now back",
        "guards/admit",
        {"{p}l3": ["m1", "m2"], "{p}l9": ["m3"]},
        PLACED_KEYS,
        _placed_argv("enqueue"),
        ["created", TAKEN_ONE],
        {"{p}l0": ["msg"], "{p}l3": ["m1", "m2"], "{p}ready:t1": None, "{p}active": None, "{p}job:j1": _RECORD},
    ),
    Case(
        "a tenant already waiting keeps its place and weight; its job joins its ready set",
        "guards/admit",
        {
            "{p}l0": ["m1", "m2"],
            "{p}active": Z({"t1": 3, "t2": 5}),
            "{p}state": {"v": "7", "w:t1": "3.0"},
            "{p}queues": {"q"},
            "{p}counts": {"seq": "4"},
        },
        PLACED_KEYS,
        _placed_argv("enqueue"),
        ["created", TAKEN_ONE],
        {
            "{p}l0": ["m1", "m2"],
            "{p}ready:t1": Z({"j1": 4e15 + 5}),
            "{p}counts": Having({"seq": "5"}),
            "{p}active": Z({"t1": 3, "t2": 5}),
            "{p}state": {"v": "7", "w:t1": "3.0"},
            # its message waits in its record
            "{p}job:j1": {**_RECORD, "message": "msg"},
            "{p}queues": {"q"},
        },
    ),
    Case(
        "with another broker the job waits in its ready set without a message, for the workers to take",
        "guards/admit",
        {},
        [*PLACED_KEYS[:11], *["{p}job:j1"] * 4, "{p}due", "{p}parked"],
        _placed_argv("wait", message=""),
        ["created", TAKEN_ONE],
        {"{p}ready:t1": Z({"j1": 4e15 + 1}), "{p}active": Z({"t1": 0}), "{p}job:j1": _RECORD, "{p}queues": {"q"}},
    ),
    Case(
        "a delayed job's message is parked until due, on its broker list; nothing is dispatched",
        "guards/admit",
        {},
        PLACED_KEYS,
        _placed_argv("park", park_in="30"),
        ["created", TAKEN_ONE],
        {"{p}due": Z({"j1": ANY}), "{p}parked": {"j1": "{p}l0\nmsg"}, "{p}l0": None, "{p}ready:t1": None},
    ),
    Case(
        "with another broker a delayed job is parked until due without a message, for its releaser to publish",
        "guards/admit",
        {},
        [*_ADMIT_SHARED_KEYS, *["{p}job:j1"] * 11, "{p}due", "{p}parked"],
        _placed_argv("park", message="", park_in="30"),
        ["created", TAKEN_ONE],
        {"{p}due": Z({"j1": ANY}), "{p}parked": {"j1": "\n"}, "{p}ready:t1": None},
    ),
    Case(
        "a job refused at the door is placed nowhere",
        "guards/admit",
        {"{p}counts": {"pending": "5"}},
        PLACED_KEYS,
        _placed_argv("enqueue"),
        ["backlog", EMPTY_WINDOW, 5],
        {"{p}job:j1": None, "{p}l0": None, "{p}ready:t1": None, "{p}active": None},
    ),
]

CASES = (
    DISPATCH_POP
    + PARKING
    + DISPATCH
    + CLAIM
    + REFRESH
    + SCHEDULE_RETRY
    + MARK_DEAD_LETTER
    + FINALIZE
    + CANCEL
    + READMIT
    + RECOVER
    + OVERDUE
    + POSTPONE
    + LISTING_ADD
    + FORGET
    + RATE_ACQUIRE
    + HTTP_ATTEMPTS
    + FORGET_LAPSED
    + ANNOUNCE_LIVE
    + RELEASE
    + RELEASE_DUE_FAIR
    + ADMIT
    + ADMIT_PLACES
    + ADMIT_BATCH
    + RATE_STATUS
    + ACQUIRE
)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.script}: {case.name}")
def test_script(redis: Redis, prefix: str, case: Case) -> None:
    # given
    for key, value in _sub(case.given, prefix).items():
        _put(redis, key, value)
    for key, seconds in _sub(case.given_ttl, prefix).items():
        redis.expire(key, seconds)
    # when
    reply = script(redis, case.script)(keys=_sub(case.keys, prefix), args=_sub(case.argv, prefix))
    # then
    assert reply == _sub(case.reply, prefix)
    _DECLARED[case.script].reply(reply)  # the one mapping of this script's replies takes it
    for key, expected in _sub(case.then, prefix).items():
        assert _read(redis, key) == expected, key
    for key, expected in _sub(case.ttl, prefix).items():
        remaining = redis.ttl(key)
        assert remaining > 0 if expected == "expires" else remaining == -1, f"{key}: TTL {remaining}"


def test_a_success_with_nothing_to_delete_writes_its_record_once(redis: Redis, prefix: str) -> None:
    # given a claimed attempt: no due time, old error or waiting message in its record
    given = {"{p}job:j1": _HOLDING, "{p}watch": Z({"j1": 1030}), "{p}counts": {"pending": "1", "held": "30"}}
    for key, value in _sub(given, prefix).items():
        _put(redis, key, value)
    finalize = script(redis, "store/finalize")
    redis.config_resetstat()
    # when it succeeds
    reply = finalize(keys=_sub(FINAL_KEYS, prefix), args=_finalize_argv("succeeded", "attempt", result="1"))
    # then the record is written by one HSET, and nothing is deleted from it
    assert reply == 1
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in redis.info("commandstats").items()}
    assert calls.get("hdel", 0) == 0
    assert calls["hset"] == 2  # the record and the tenant's counts
    assert calls.get("hstrlen", 0) == 0


def test_every_script_has_cases() -> None:
    # given the script files, then each has at least one case above and the code declares it
    assert {case.script for case in CASES} == set(_SOURCES)
    assert set(_DECLARED) == set(_SOURCES)


def test_cancel_outcomes_cover_every_final_state() -> None:
    # given each final state, then cancel's reply for it maps to an outcome naming that state
    for state in FINAL_STATES:
        assert CancelOutcome(f"finished:{state.value}").finished_state is state
    assert CancelOutcome("cancelled").finished_state is None


# --- the loader: files, headers, includes ------------------------------------------------


def test_every_script_file_starts_with_its_contract() -> None:
    # given every script file as written (before includes)
    for room in lua_scripts.ROOMS:
        for entry in (resources.files(room) / "lua").iterdir():
            if not entry.name.endswith(".lua"):
                continue
            text = entry.read_text(encoding="utf-8")
            header = text[: text.index("\n\n")] if "\n\n" in text else text
            # then it opens with a comment header naming its KEYS, ARGV and reply
            assert all(line.startswith("--") for line in header.splitlines()), entry.name
            for word in ("KEYS", "ARGV", "Reply:"):
                assert word in header, f"{room} {entry.name}: no {word} in its header"


def test_includes_are_resolved_once_and_every_include_is_used() -> None:
    # given every script with its includes resolved
    sources = lua_scripts.all_sources()
    # then no include line is left, and each piece is defined once where it is used
    assert not any("--@include" in text for text in sources.values())
    for name in ("store/finalize", "store/cancel"):
        assert sources[name].count("local function final_transition(") == 1
    for name in ("guards/admit", "guards/readmit", "guards/rate_status"):
        assert sources[name].count("local function window_stats(") == 1
    # and every include file is part of some script
    for room in lua_scripts.ROOMS:
        includes = resources.files(room) / "lua" / "includes"
        for entry in includes.iterdir() if includes.is_dir() else ():
            piece = entry.name.removesuffix(".lua")
            assert any(f"-- begin {piece}\n" in text for text in sources.values()), f"{room}: {piece} unused"


def test_an_unknown_include_is_named() -> None:
    # given a script that includes a piece that does not exist, when resolved, then the error names it
    with pytest.raises(LookupError, match="no include 'nowhere'"):
        lua_scripts._resolve("pulse_core.store", "--@include nowhere\nreturn 1\n", set(), "test.lua")


def test_state_sets_are_the_job_states(redis: Redis) -> None:
    # given the generated job_states piece, when Redis runs it, then its sets are JobState's
    lua = lua_scripts.GENERATED["job_states"]() + (
        "local f, w = {}, {}\n"
        "for k in pairs(FINAL_STATES) do f[#f + 1] = k end\n"
        "for k in pairs(WAITING_STATES) do w[#w + 1] = k end\n"
        "return {f, w}\n"
    )
    final, waiting = redis.eval(lua, 0)
    assert set(final) == {state.value for state in FINAL_STATES}
    assert set(waiting) == {state.value for state in CLAIMABLE_STATES}


def test_luacheck_finds_nothing(tmp_path: Path) -> None:
    # given every script as Redis runs it (includes resolved)
    luacheck = shutil.which("luacheck")
    if luacheck is None:
        pytest.skip("luacheck is not installed (Debian: apt-get install lua-check)")
    lua_scripts.write_all(tmp_path)
    # when luacheck reads them with the project's settings, then it finds nothing
    config = Path(__file__).resolve().parent.parent / ".luacheckrc"
    done = subprocess.run(
        [luacheck, "--no-color", "--codes", "--config", str(config), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
