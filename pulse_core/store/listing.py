"""Listing a sorted-set index newest first, a page at a time, with one opaque cursor.

Both listings (a tenant's jobs in ``keys.tenant_jobs``, its dead letters in
``keys.tenant_dead_letters``) use this module:

- **Order is total and stable:** score descending, then member descending (Redis'
  own order for equal scores). A position is the pair ``(score, member)``, so a
  cursor stays valid while entries are added or removed, and any number of
  entries sharing one score page through to the end.
- **Ties follow the order of writes:** every writer adds through the Lua include
  (``listing_add``), which scores a member at ``max(score, newest + 1/1024)``:
  two jobs created in the same millisecond come back newest first. Scores stay
  milliseconds (plus a fraction), so time filters keep working.
- **One cursor format:** lowercase hex of the position's score in 1/1024 ms
  (8 bytes) followed by the member's bytes. ``CURSOR_PATTERN`` describes it in the
  OpenAPI document; every string it matches decodes to some position, so a
  cursor the schema accepts is never refused (an invented one simply starts the
  page somewhere in the order).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

from redis import Redis

from pulse_core.errors import InvalidParameter
from pulse_core.lua_scripts import LuaScript

T = TypeVar("T")

#: Steps per millisecond: a tie is broken by scoring the later write 1/TICKS ms higher.
TICKS = 1024
#: The most entries read from Redis per round trip (a scan starts smaller, at what its page
#: needs, and doubles up to this).
BATCH = 200
#: What a cursor looks like (hex: 8 bytes of position, then 1 to 192 bytes of member).
CURSOR_PATTERN = r"^([0-9a-f]{2}){9,200}$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_SCORE_BYTES = 8

#: Adds one entry with ``listing_add`` (``store/lua/includes/listing_add.lua``): at
#: ``max(score, newest + 1/1024)``, so newest first follows the order of writes even
#: within one millisecond. Every writer of an index (admission, the final transition,
#: ``JobStore.create``) uses the same include.
ADD = LuaScript("pulse_core.store", "listing_add", int)


@dataclass(frozen=True, order=True)
class Position:
    """Where an entry sits in the order: later positions compare greater."""

    score: float
    member: bytes


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page, newest first."""

    items: list[T]
    #: Opaque cursor for the next page; ``None`` when there is no more.
    next_cursor: str | None


def add(redis: Redis, key: str, score: float, member: str) -> None:
    """Add ``member`` to the index ``key`` the way every writer does (``listing_add``)."""
    ADD.register(redis)(keys=[key], args=[repr(float(score)), member])


def encode_cursor(position: Position) -> str:
    ticks = round(position.score * TICKS)
    return (ticks.to_bytes(_SCORE_BYTES, "big") + position.member).hex()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; ``InvalidParameter`` naming ``cursor`` when it does not match ``CURSOR_PATTERN``."""
    if not _CURSOR_RE.fullmatch(cursor):
        raise InvalidParameter("cursor", "not a cursor this API returned")
    raw = bytes.fromhex(cursor)
    return Position(int.from_bytes(raw[:_SCORE_BYTES], "big") / TICKS, raw[_SCORE_BYTES:])


def scan(
    redis: Redis,
    key: str,
    *,
    after: Position | None = None,
    ceiling: float | None = None,
    floor: float | None = None,
    first: int = BATCH,
) -> Iterator[tuple[Position, str]]:
    """Entries of ``key`` newest first, strictly after ``after`` (or at most ``ceiling``), down to ``floor``.

    Reads ``first`` entries in its first round trip, then twice as many each time up to
    ``BATCH``; a run of equal scores longer than a batch is walked with an offset, so it
    never ends the scan early.
    """
    top: float | None = after.score if after is not None else ceiling
    offset = 0  # entries scored ``top`` already read
    bottom: float | str = floor if floor is not None else "-inf"
    size = max(1, min(first, BATCH))
    while True:
        rows: list[tuple[str, float]] = redis.zrevrangebyscore(
            key, "+inf" if top is None else repr(top), bottom, start=offset, num=size, withscores=True
        )
        for member, score in rows:
            position = Position(score, member.encode())
            if after is not None and position >= after:
                continue  # at or before the cursor (or seen already, if the index moved)
            after = position
            yield position, member
        if len(rows) < size:
            return
        last = rows[-1][1]
        same = sum(1 for _, score in rows if score == last)
        offset = offset + same if last == top else same
        top = last
        size = min(BATCH, 2 * size)


def page(
    redis: Redis,
    key: str,
    *,
    limit: int,
    cursor: str | None,
    load: Callable[[Sequence[str]], Sequence[T | None]],
    keep: Callable[[T], bool] = lambda _: True,
    budget: int | None = None,
    gone: list[str] | None = None,
) -> Page[T]:
    """Up to ``limit`` loaded entries after ``cursor`` that ``keep`` accepts.

    ``load`` reads the items of a run of members (``None`` for one whose record is
    gone; such members are appended to ``gone``). It is asked for only as many as the
    page still needs, then (when a filter or gone records left the page short) twice as
    many each time, up to ``BATCH``: ``limit=1`` reads one record. With ``budget``, at
    most that many entries are examined: a filtered page may then be short while
    ``next_cursor`` is set. The cursor names the last entry examined, so nothing is skipped.
    """
    # One index entry beyond the page's tells whether there is more, in the same round trip.
    entries = scan(redis, key, after=decode_cursor(cursor) if cursor else None, first=limit + 1)
    found: list[T] = []
    last: Position | None = None
    left = budget if budget is not None else -1
    more = False
    size = 0
    while left != 0:
        size = min(BATCH, max(limit - len(found), 2 * size))
        chunk = list(islice(entries, size if left < 0 else min(size, left)))
        if not chunk:
            break
        items = load([member for _, member in chunk])
        for index, ((position, member), item) in enumerate(zip(chunk, items, strict=True)):
            last, left = position, left - 1
            if item is None:
                if gone is not None:
                    gone.append(member)
            elif keep(item):
                found.append(item)
            if len(found) == limit:
                more = index < len(chunk) - 1
                break
        if len(found) == limit:
            break
    if last is not None and (len(found) == limit or left == 0) and not more:
        more = next(entries, None) is not None
    return Page(found, encode_cursor(last) if more and last is not None else None)
