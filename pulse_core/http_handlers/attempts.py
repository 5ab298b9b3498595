"""Long HTTP jobs: a receiver that answers ``202`` reports later, with a per-attempt token.

Each delivery carries a fresh token (``attemptToken`` in the signed body); Redis keeps
only its SHA-256, with the attempt and cycle it belongs to (``keys.http_attempt_token``).
On ``202`` the worker hands the attempt off: the job stays ``running`` under a lease
owned by no worker (``HANDED_OFF_OWNER``), so no worker refreshes it. The receiver
extends it with ``POST /v1/jobs/{jobId}/heartbeat`` and ends it with ``.../complete``.
A lease that lapses is a failed attempt, retried like a crash (the recovery sweep);
the next attempt's delivery replaces the token, so an old attempt's token is refused.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job
from pulse_core.lua_scripts import LuaScript

#: ``owner`` of a running attempt whose receiver answered 202 (no worker refreshes it).
HANDED_OFF_OWNER = "http-202"
#: Longest lease one heartbeat may ask for, and the token's longest life.
MAX_LEASE_SECONDS = 3600
TOKEN_TTL_SECONDS = 7 * 24 * 3600


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: How long a spent token can repeat its outcome (a completion sent again after a lost answer).
SPENT_TOKEN_TTL_SECONDS = 24 * 3600


def outcome_digest(outcome: object) -> str:
    """The SHA-256 of a reported outcome (its JSON with sorted keys), as a spent token keeps it."""
    return _digest(json.dumps(outcome, sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True)
class TokenCheck:
    """``ok``, ``bad-token`` (unknown, or another attempt's), ``not-handed-off``,
    ``not-running`` (with the job's ``state``) or ``spent`` (with the ``outcome`` digest it reported)."""

    verdict: str
    state: str | None = None
    outcome: str | None = None
    #: ``not-running``: the attempt and cycle the token was issued for
    attempt: tuple[int, int] | None = None


#: After a 202: the attempt stays running, leased on Redis' clock (``lua/hand_off.lua``).
_HAND_OFF = LuaScript("pulse_core.http_handlers", "hand_off", bool)
#: A heartbeat's or completion's token against the running attempt (``lua/check_attempt.lua``).
_CHECK = LuaScript("pulse_core.http_handlers", "check_attempt", list)
#: A token that reported its outcome can only repeat it (``lua/spend_token.lua``).
_SPEND = LuaScript("pulse_core.http_handlers", "spend_token", int)


class AttemptTokens:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._hand_off = _HAND_OFF.register(redis)
        self._check = _CHECK.register(redis)
        self._spend = _SPEND.register(redis)

    @staticmethod
    def new(job: Job) -> tuple[str, str]:
        """A fresh token for ``job``'s current attempt and what to store under
        ``keys.http_attempt_token`` (replacing any older attempt's) for ``TOKEN_TTL_SECONDS``."""
        token = secrets.token_urlsafe(32)
        return token, f"{job.attempts} {job.cycle} {_digest(token)}"

    def hand_off(self, job: Job, lease_seconds: float) -> bool:
        """After a ``202``: the attempt stays running, its lease ``lease_seconds`` from now."""
        done = self._hand_off(
            keys=[keys.job(job.job_id), keys.WATCH],
            args=[str(job.attempts), str(job.cycle), lease_seconds, job.job_id, HANDED_OFF_OWNER],
        )
        return bool(done)

    def check(self, job_id: str, token: str, *, extend_seconds: float | None = None) -> TokenCheck:
        """Whether ``token`` is the running, handed-off attempt's; extend its lease if asked."""
        lease_until = extend_seconds if extend_seconds is not None else ""
        found = self._check(
            keys=[keys.http_attempt_token(job_id), keys.job(job_id), keys.WATCH, keys.http_spent_token(job_id)],
            args=[_digest(token), lease_until, job_id, HANDED_OFF_OWNER],
        )
        verdict = str(found[0])
        if verdict == "spent":
            return TokenCheck(verdict, outcome=str(found[1]))
        if verdict == "not-running":
            attempt = (int(found[2]), int(found[3])) if len(found) > 3 else None
            return TokenCheck(verdict, str(found[1]), attempt=attempt)
        return TokenCheck(verdict)

    def spend(self, job_id: str, token: str, outcome: str) -> bool:
        """``token`` reported ``outcome`` (``outcome_digest``): from now on it can only repeat it.
        Whether this spent it first (``False``: a twin or a resend spent it before)."""
        first = self._spend(
            keys=[keys.http_attempt_token(job_id), keys.http_spent_token(job_id)],
            args=[_digest(token), outcome, SPENT_TOKEN_TTL_SECONDS],
        )
        return bool(first)
