"""A ``pulse.run_job`` message as kombu's Redis transport stores it, from a template.

The admission script pushes each job's message itself (the broker is the job store's
Redis), so the API must write the exact envelope kombu would: Celery's task message
(protocol 2) inside kombu's envelope, body base64-encoded. Building it through
``app.amqp.as_task_v2`` and ``kombu_dumps`` on every submit costs tens of
microseconds; almost all of it is the same for every job. So the envelope is built
once per Celery app *through that same machinery*, with marker values in the places
that vary (task id, jobType, ETA, time limits, lane, priority, delivery tag, the
body), cut at the markers, and each message is the pieces joined with its own values,
JSON-encoded as kombu encodes them (``json.dumps``: ``", "`` and ``": "`` separators,
ASCII only). The result is the same bytes (``tests/test_message_template.py`` holds it
to the machinery); written by hand because kombu has no "render many" API.

What is per process, not per app: ``origin`` (Celery's ``anon_nodename``, which holds
the pid), so a template is rebuilt in a forked child.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

from celery import Celery
from kombu.utils.json import dumps as kombu_dumps

from pulse_core.ids import uuid4_text

#: The places that vary, each a JSON string in the template: ``"\u0001NAME\u0001"``.
_MARK = "\u0001"
_FIELDS = ("ID", "SHADOW", "ETA", "HARD", "SOFT", "ARGSREPR", "BODY", "LANE", "PRIORITY", "TAG", "EXTRA")
#: kombu_dumps escapes the marker; this finds a marked JSON string in its output.
_MARKED = re.compile(r'"\\u0001([A-Z]+)\\u0001"')
#: Where extra headers (a trace's ``traceparent``) go: after the last header.
_EXTRA_HEADER = "\u0001EXTRA\u0001"
#: Cuts a pattern at the places left open (never in a message: JSON text escapes it).
_CUT = "\u0002"
#: Kinds of message (jobType, lane, priority, time limits) a template keeps filled in.
_KINDS = 1024


def _mark(name: str) -> str:
    return f"{_MARK}{name}{_MARK}"


@dataclass(frozen=True)
class MessageTemplate:
    """The envelope as a ``str.format`` pattern: fixed text, and ``{NAME}`` where it varies."""

    pattern: str
    pid: int
    #: The pattern with a kind of job's fixed places filled in (``fixed``), by their values.
    _kinds: dict[tuple[str, ...], tuple[list[str], list[str]]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, app: Celery, task_name: str) -> MessageTemplate:
        """Render one marked message through Celery's and kombu's own code, and cut it."""
        envelope = reference_envelope(
            app,
            task_name,
            task_id=_mark("ID"),
            job_id=_MARK,  # the body and argsrepr are marked whole, below
            job_type=_mark("SHADOW"),
            eta=_mark("ETA"),
            time_limit=_mark("HARD"),
            soft_time_limit=_mark("SOFT"),
            argsrepr=_mark("ARGSREPR"),
            attempt=0,
            cycle=0,
            lane=_mark("LANE"),
            priority=_mark("PRIORITY"),
            delivery_tag=_mark("TAG"),
            extra_headers={_EXTRA_HEADER: None},
        )
        envelope["body"] = _mark("BODY")
        text = str(kombu_dumps(envelope))
        # The extra-headers slot: `, "<EXTRA>": null` becomes one marked place.
        text = text.replace(', "\\u0001EXTRA\\u0001": null', '"\\u0001EXTRA\\u0001"')
        parts = _MARKED.split(text)
        pieces, names = parts[0::2], parts[1::2]
        if set(names) != set(_FIELDS):
            raise RuntimeError(f"unexpected message template: {names}")
        fixed = [piece.replace("{", "{{").replace("}", "}}") for piece in pieces]
        pattern = fixed[0] + "".join(f"{{{name}}}{piece}" for name, piece in zip(names, fixed[1:], strict=True))
        return cls(pattern=pattern, pid=os.getpid())

    def render(self, values: dict[str, str]) -> str:
        """The message with each place's JSON text from ``values``."""
        return self.pattern.format_map(values)

    def fixed(self, values: dict[str, str]) -> tuple[list[str], list[str]]:
        """The pattern with the places in ``values`` filled in, cut at the others: (the
        pieces, the names of the places between them). Kept for the next message of the
        same kind (at most ``_KINDS`` kinds, then the keeping starts over)."""
        key = tuple(values.values())
        found = self._kinds.get(key)
        if found is None:
            marked = {name: f"{_CUT}{name}{_CUT}" for name in _FIELDS if name not in values}
            parts = self.pattern.format_map({**values, **marked}).split(_CUT)
            found = (parts[0::2], parts[1::2])
            if len(self._kinds) >= _KINDS:
                self._kinds.clear()
            self._kinds[key] = found
        return found


def reference_envelope(
    app: Celery,
    task_name: str,
    *,
    task_id: str,
    job_id: str,
    job_type: str,
    eta: str | None,
    time_limit: Any,
    soft_time_limit: Any,
    argsrepr: str,
    attempt: int,
    cycle: int,
    lane: str,
    priority: Any,
    delivery_tag: str,
    extra_headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope as kombu's Redis transport stores a message Celery built (protocol 2,
    ``Channel.prepare_message`` + ``basic_publish`` on the anonymous exchange)."""
    message = app.amqp.as_task_v2(
        task_id,
        task_name,
        args=(job_id,),
        kwargs={"attempt": attempt, "cycle": cycle},
        shadow=job_type,
        eta=eta,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        argsrepr=argsrepr,
        kwargsrepr="{}",
    )
    message.headers.update(extra_headers or {})
    body = base64.b64encode(kombu_dumps(message.body).encode("utf-8")).decode("ascii")
    properties = {
        **message.properties,
        # send_task passes these as publish options too; kombu keeps them as properties.
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": lane},
        "priority": priority,
        "body_encoding": "base64",
        "delivery_tag": delivery_tag,
    }
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message.headers,
        "properties": properties,
    }


#: Celery's body after the args: ``kwargs`` then the empty canvas (callbacks, ...).
_BODY_TAIL = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
#: JSON text of a string as kombu writes it (json.dumps' own C encoder, ASCII only).
_string: Callable[[str], str] = encode_basestring_ascii


def _json(value: str | int | None) -> str:
    """JSON text of a string, an int or ``None`` as ``json.dumps`` writes it."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _string(value)
    if type(value) is int:
        return str(value)
    return json.dumps(value)


def render_message(
    template: MessageTemplate,
    *,
    job_id: str,
    job_type: str,
    attempt: int,
    cycle: int,
    lane: str,
    priority: int,
    countdown: float | None,
    time_limit: int | None,
    soft_time_limit: int | None,
    extra_headers: dict[str, str] | None = None,
    task_id: str | None = None,
    delivery_tag: str | None = None,
    now: datetime | None = None,
) -> str:
    """One job's message from ``template`` (ids fresh unless given, for tests)."""
    task_id = task_id or uuid4_text()
    eta = None
    if countdown:  # as Celery's as_task_v2: a zero countdown is no ETA
        eta = ((now or datetime.now(UTC)) + timedelta(seconds=countdown)).isoformat()
    body = f'[[{_string(job_id)}], {{"attempt": {_json(attempt)}, "cycle": {_json(cycle)}}}{_BODY_TAIL}'
    own = {
        "ID": _string(task_id),
        "ARGSREPR": _string(repr((job_id,))),
        "BODY": '"' + base64.b64encode(body.encode("utf-8")).decode("ascii") + '"',
        "TAG": _string(delivery_tag or uuid4_text()),
    }
    if eta is None and not extra_headers:
        # A job due now without trace headers: its kind's places are filled in already.
        pieces, names = template.fixed(
            {
                "SHADOW": _string(job_type),
                "HARD": _json(time_limit),
                "SOFT": _json(soft_time_limit),
                "LANE": _string(lane),
                "PRIORITY": _json(priority),
                "ETA": "null",
                "EXTRA": "",
            }
        )
        out = [pieces[0]]
        for name, piece in zip(names, pieces[1:], strict=True):
            out += (own[name], piece)
        return "".join(out)
    extra = "".join(f", {_string(name)}: {_string(value)}" for name, value in (extra_headers or {}).items())
    return template.render(
        {
            **own,
            "SHADOW": _string(job_type),
            "ETA": _json(eta),
            "HARD": _json(time_limit),
            "SOFT": _json(soft_time_limit),
            "LANE": _string(lane),
            "PRIORITY": _json(priority),
            "EXTRA": extra,
        }
    )
