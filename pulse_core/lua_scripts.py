"""Pulse's Lua scripts: one ``.lua`` file a script, kept in the room that runs it.

A script lives in the ``lua/`` folder of its room (``pulse_core/store/lua/claim.lua``),
ships as package data and is read with ``importlib.resources``. Each file starts with
a header comment naming its KEYS, ARGV and reply.

Shared pieces are included, not pasted: a line ``--@include NAME`` is replaced by

- ``lua/includes/NAME.lua`` of the same room (``final_transition``, ``rate_windows``),
  whose own includes are resolved in turn; or
- a piece generated here: ``job_states`` (``FINAL_STATES`` and ``WAITING_STATES``, Lua
  sets built from ``pulse_core.jobs.JobState`` so they cannot drift from Python).

Each piece is included at most once per script. A script is registered with redis-py's
``register_script`` (EVALSHA, loading it on ``NOSCRIPT``); :class:`LuaScript` pairs
it with the one function that maps its reply to a Python value, so no call site takes
a reply apart. ``python -m pulse_core.lua_scripts DIR`` writes every script, includes
resolved, into ``DIR`` (``make lint`` runs luacheck on them).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

from pulse_core.jobs import CLAIMABLE_STATES, FINAL_STATES, JobState

#: The rooms that keep scripts (a ``lua/`` folder each).
ROOMS = ("pulse_core.store", "pulse_core.guards", "pulse_core.http_handlers")

_INCLUDE = re.compile(r"^--@include[ \t]+([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)

T = TypeVar("T")


def _lua_set(name: str, states: Iterable[JobState]) -> str:
    members = ", ".join(f"{state.value}=true" for state in sorted(states))
    return f"local {name} = {{{members}}}\n"


def _job_states() -> str:
    return (
        "-- generated from pulse_core.jobs.JobState by pulse_core.lua_scripts\n"
        + _lua_set("FINAL_STATES", FINAL_STATES)
        + "-- waiting for an attempt: claimable by a message, cancellable at once\n"
        + _lua_set("WAITING_STATES", CLAIMABLE_STATES)
    )


#: Pieces generated at load time rather than read from a file.
GENERATED: dict[str, Callable[[], str]] = {
    "job_states": _job_states,
}


def _folder(room: str) -> Any:
    return resources.files(room) / "lua"


def _resolve(room: str, text: str, seen: set[str], where: str) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return f"-- {name}: included above"
        seen.add(name)
        if name in GENERATED:
            piece = GENERATED[name]()
        else:
            # The room's own includes first, then a lower room's (guards may include the store's).
            found = [r for r in (room, *ROOMS) if (_folder(r) / "includes" / f"{name}.lua").is_file()]
            if not found:
                raise LookupError(f"{where}: no include {name!r} ({room}/lua/includes/{name}.lua, or generated)")
            home = found[0]
            path = _folder(home) / "includes" / f"{name}.lua"
            piece = _resolve(home, path.read_text(encoding="utf-8"), seen, f"{home}/lua/includes/{name}.lua")
        return f"-- begin {name}\n{piece.rstrip()}\n-- end {name}"

    return _INCLUDE.sub(include, text)


@cache
def source(room: str, name: str) -> str:
    """The text of ``room``'s script ``name`` with its includes resolved."""
    path = _folder(room) / f"{name}.lua"
    if not path.is_file():
        raise LookupError(f"no Lua script {name!r} in {room} ({room}/lua/{name}.lua)")
    where = f"{room}/lua/{name}.lua"
    return _resolve(room, path.read_text(encoding="utf-8"), set(), where)


def all_sources() -> dict[str, str]:
    """Every script of every room, includes resolved, by ``room/name`` (``store/claim``)."""
    found: dict[str, str] = {}
    for room in ROOMS:
        for entry in _folder(room).iterdir():
            if entry.name.endswith(".lua") and entry.is_file():
                name = entry.name.removesuffix(".lua")
                found[f"{room.rpartition('.')[2]}/{name}"] = source(room, name)
    return found


@dataclass(frozen=True)
class LuaScript(Generic[T]):
    """A script file and the one function that maps its reply (declare it next to the caller)."""

    room: str
    name: str
    reply: Callable[[Any], T]

    def register(self, redis: Redis) -> BoundScript[T]:
        """Register the script on ``redis`` (EVALSHA, loaded again on ``NOSCRIPT``)."""
        return BoundScript(self, redis.register_script(source(self.room, self.name)))


@dataclass(frozen=True)
class BoundScript(Generic[T]):
    """A registered script; calling it runs it and maps the reply."""

    script: LuaScript[T]
    registered: Script

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> T:
        return self.script.reply(self.registered(keys=keys, args=args))

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Add a run to ``pipe``; map its raw reply from ``pipe.execute()`` with :meth:`read`."""
        self.registered(keys=keys, args=args, client=pipe)

    def read(self, raw: Any) -> T:
        return self.script.reply(raw)

    def call_many(self, redis: Redis, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[T]:
        """Run the script once per ``(keys, args)``, in order, in one pipelined round trip.

        Plain EVALSHA: redis-py's own pipelined scripts ask ``SCRIPT EXISTS`` first, a
        second round trip every time. A call answered NOSCRIPT (Redis restarted or its
        scripts were flushed) did not run; it is run again on its own, which loads the script.
        A run Redis refused raises its error (``call_each`` answers it in its place instead).
        """
        replies = self.call_each(redis, calls)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies  # type: ignore[return-value]

    def call_each(self, redis: Redis, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[T | ResponseError]:
        """``call_many``, with the error of a run Redis refused (out of memory since the run
        before it, say) in that run's place: each run is a step of its own, so the runs before
        and after it stand whatever became of it."""
        sha = self.registered.sha
        with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            raw = pipe.execute(raise_on_error=False)
        replies: list[T | ResponseError] = []
        for (keys, args), reply in zip(calls, raw, strict=True):
            if isinstance(reply, NoScriptError):
                try:
                    reply = self.registered(keys=keys, args=args)
                except ResponseError as exc:
                    replies.append(exc)
                    continue
            elif isinstance(reply, ResponseError):
                replies.append(reply)
                continue
            elif isinstance(reply, Exception):
                raise reply
            replies.append(self.script.reply(reply))
        return replies


def write_all(folder: Path) -> list[Path]:
    """Write every script, includes resolved, as ``ROOM.NAME.lua`` in ``folder`` (for luacheck)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in all_sources().items():
        path = folder / (name.replace("/", ".") + ".lua")
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pulse_core.lua_scripts DIR  (writes every script, includes resolved)")
    for written_path in write_all(Path(sys.argv[1])):
        print(written_path)
