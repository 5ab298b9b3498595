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
import secrets
import time
from dataclasses import dataclass

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import Job

#: ``owner`` of a running attempt whose receiver answered 202 (no worker refreshes it).
HANDED_OFF_OWNER = "http-202"
#: Longest lease one heartbeat may ask for, and the token's longest life.
MAX_LEASE_SECONDS = 3600
TOKEN_TTL_SECONDS = 7 * 24 * 3600

# KEYS: job, watch. ARGV: attempt, cycle, lease_until, job_id, owner.
_HAND_OFF = """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'cycle')
if f[1] ~= 'running' or f[2] ~= ARGV[1] or (f[3] or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'leaseUntil', ARGV[3], 'owner', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# KEYS: token, job, watch. ARGV: digest, lease_until (or '' to only check), job_id, owner.
# -> {'ok', attempts, cycle} | {'bad-token'} | {'not-running', state}
_CHECK = """
local stored = redis.call('GET', KEYS[1])
if not stored then return {'bad-token'} end
local attempt, cycle, digest = string.match(stored, '^(%d+) (%d+) (%x+)$')
if digest ~= ARGV[1] then return {'bad-token'} end
local f = redis.call('HMGET', KEYS[2], 'state', 'attempts', 'cycle', 'owner')
if f[1] ~= 'running' or f[2] ~= attempt or (f[3] or '0') ~= cycle or f[4] ~= ARGV[4] then
  return {'not-running', f[1] or 'missing'}
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'leaseUntil', ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
end
return {'ok', attempt, cycle}
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenCheck:
    """``ok``, ``bad-token`` (unknown, or another attempt's) or ``not-running``."""

    verdict: str
    state: str | None = None


class AttemptTokens:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._hand_off = redis.register_script(_HAND_OFF)
        self._check = redis.register_script(_CHECK)

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
            args=[str(job.attempts), str(job.cycle), repr(time.time() + lease_seconds), job.job_id, HANDED_OFF_OWNER],
        )
        return bool(done)

    def check(self, job_id: str, token: str, *, extend_seconds: float | None = None) -> TokenCheck:
        """Whether ``token`` is the running, handed-off attempt's; extend its lease if asked."""
        lease_until = repr(time.time() + extend_seconds) if extend_seconds is not None else ""
        found = self._check(
            keys=[keys.http_attempt_token(job_id), keys.job(job_id), keys.WATCH],
            args=[_digest(token), lease_until, job_id, HANDED_OFF_OWNER],
        )
        verdict = str(found[0])
        return TokenCheck(verdict, str(found[1]) if len(found) > 1 and verdict == "not-running" else None)

    def forget(self, job_id: str) -> None:
        self._redis.delete(keys.http_attempt_token(job_id))
