"""Execution limits per jobType (and per tenant x jobType), held across every worker.

    @handler("crm.sync", rate_limit="10/second", max_concurrency=5)

The tenants file can override a jobType's limits (``[job_types."crm.sync"]``) and
give one tenant a limit of its own on top (``[tenants.acme.job_types."crm.sync"]``).
Celery's ``rate_limit`` is per worker; these are counted in Redis, so they hold
however many workers and hosts run the jobType.

A job over a limit waits, it does not fail, and never counts an attempt (all of this
happens before the claim):

- **parked** (whenever the worker gives ``enter`` a way to build the job's
  ``ParkedMessage``: it does with either broker): over ``max_concurrency`` (or its
  tenant's ``max_running``), it joins the full set's parked jobs at its tenant's next turn
  (tenants waiting on one set take turns, each one's jobs in the order they parked:
  ``keys.parked_turns``) and its message is acked; when a slot frees (``leave``, or the workers' tick for a holder
  that died) the first parked job is handed the slot, in the same script. Over a rate
  window, it is parked until the window allows (``keys.PARKED_UNTIL``) and the workers'
  tick releases the due ones in bulk. No message waits in a worker, nothing is
  re-published on a timer. How a released job goes back depends on the broker: with the
  job store's Redis its stored message is pushed onto its queue by the releasing script
  itself; with another broker (RabbitMQ) it is parked without a message and the script
  gives its id back (``Released.to_publish``) for the releasing worker to publish. A
  worker killed between the two leaves the job ``queued`` (or ``retrying``/``scheduled``)
  with no message: the recovery sweep publishes it at its deadline in ``keys.WATCH``;
- **deferred** only when ``enter`` is given no way to park: its message goes back with
  a short countdown (the same attempt). A crash between the two only leaves a duplicate
  copy of the same attempt, which the claim refuses.

- ``max_concurrency``: a semaphore, the sorted set ``keys.concurrency``. Each
  holder is ``<jobId>|<token>``; it counts while its grace (until the claim takes
  the job's lease) runs or while its job is ``running`` under a live lease, so a
  worker that dies leaks its slot only until its lease lapses (``PULSE_LEASE_SECONDS``).
- ``rate_limit``: a **moving window** of start times (exact: at most N starts in
  any window of the limit's length), one window per jobType and per tenant x
  jobType (``keys.execution_rate``), on Redis' clock, all windows taken in one
  script or none. A handler starts a few milliseconds after its gate, so a window
  counts ``RATE_SLACK`` longer than declared (10 % of it, at most 0.25 s): the
  starts themselves never exceed the limit in any window of the declared length.
  The ``limits`` library's moving window cannot do this (its expiry is whole
  seconds on the caller's clock), hence the small script of our own.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis

from pulse_core import keys
from pulse_core.lua_scripts import LuaScript
from pulse_core.policy import ExecutionLimits, parse_rate_limit
from pulse_core.tenants import TenantsConfig

#: Deferral when every run slot is taken: uniform in [base, 2 * base) seconds.
CONCURRENCY_DEFERRAL_SECONDS = 0.5
#: Smallest deferral when a rate window is full (its reset time is usually later).
MIN_RATE_DEFERRAL_SECONDS = 0.05


def rate_slack(seconds: float) -> float:
    """How much longer than declared a rate window of ``seconds`` is counted."""
    return min(0.25, 0.1 * seconds)


def _acquire_reply(reply: int) -> int | None:
    """``None`` when a slot was taken in every set, else the 1-based index of the first full set."""
    return int(reply) or None


#: Takes a run slot in every set, or none (``pulse_core/guards/lua/acquire_slots.lua``).
_ACQUIRE = LuaScript("pulse_core.guards", "acquire_slots", _acquire_reply)
#: Counts a start in every rate window, or none; the reply is the seconds to wait (0: counted).
_RATE_ACQUIRE = LuaScript("pulse_core.guards", "rate_acquire", float)
#: Takes a run slot in every set, or parks the job on the first full one (``park_slots.lua``).
_PARK_SLOTS = LuaScript("pulse_core.guards", "park_slots", _acquire_reply)


@dataclass(frozen=True)
class Released:
    """What a release did: how many parked jobs went back (or were due), and the ids of those
    the caller must publish (parked without a message: a broker other than this Redis)."""

    count: int = 0
    to_publish: tuple[str, ...] = ()

    def __add__(self, other: Released) -> Released:
        return Released(self.count + other.count, self.to_publish + other.to_publish)


def _released_reply(reply: list[int | str]) -> Released:
    return Released(int(reply[0]), tuple(str(job_id) for job_id in reply[1:]))


#: Gives back run slots and hands freed ones to parked jobs (``release_slots.lua``).
_RELEASE_SLOTS = LuaScript("pulse_core.guards", "release_slots", _released_reply)
#: Parks a job until a rate window allows (``park_due.lua``).
_PARK_DUE = LuaScript("pulse_core.guards", "park_due", float)
#: Puts the parked jobs that are due back on their queues (``release_due.lua``).
_RELEASE_DUE = LuaScript("pulse_core.guards", "release_due", _released_reply)
#: Due jobs put back per round trip by the tick.
RELEASE_BATCH = 1000


def _split(template: str) -> tuple[str, ...]:
    return tuple(template.split("\x00"))


#: The key shapes release_due.lua builds a released job's ready set, its queue's dispatcher
#: keys and its tenant's counters from (``pulse_core.keys``, split where the parts go).
_FAIR_RELEASE_ARGS: list[int | str] = [
    keys.job(""),
    *_split(keys.ready("\x00", "")),
    keys.active(""),
    keys.dispatch_state(""),
    keys.DISPATCH_QUEUES,
    *_split(keys.tenant_counts("\x00")),
]


@dataclass(frozen=True)
class ParkedMessage:
    """What starts a parked job again: the broker list to push onto and the message (with a
    broker other than this Redis, no list and no message: the releasing worker publishes the
    job), and the job's tenant (tenants take turns on a full run-slot set)."""

    broker_list: str = ""
    message: str = ""
    tenant_id: str = ""


#: Builds a job's ``ParkedMessage`` when it must wait (``None``: no such job any more).
Parker = Callable[[], ParkedMessage | None]


__all__ = ["ExecutionGate", "ExecutionLimits", "ParkedMessage", "Released", "Verdict", "needs_tenant"]


def _tenant_limits(config: TenantsConfig | None, job_type: str, tenant_id: str) -> ExecutionLimits:
    tenant = config.tenants.get(tenant_id) if config else None
    rule = tenant.job_types.get(job_type) if tenant else None
    if rule is None:
        return ExecutionLimits()
    return ExecutionLimits(rate_limit=rule.rate_limit, max_concurrency=rule.max_concurrency)


def needs_tenant(config: TenantsConfig | None, job_type: str) -> bool:
    """Whether some tenant has limits of its own for ``job_type`` (or a ``max_running``)."""
    return config is not None and config.tenant_limits_apply(job_type)


@dataclass(frozen=True)
class Verdict:
    """Run now (holding ``holder``'s slots), defer by ``defer_seconds``, or ``parked``."""

    holder: str | None = None
    slot_keys: tuple[str, ...] = ()
    defer_seconds: float | None = None
    #: "concurrency" or "rate" when deferred or parked.
    reason: str | None = None
    #: The most holders of each of ``slot_keys`` (to hand freed slots on).
    slot_limits: tuple[int, ...] = ()
    #: The job waits in Redis (its message can be acked): released when a slot frees or due.
    parked: bool = False
    #: Jobs handed the run slots this job took and gave back (its rate window was full), for
    #: the caller to publish (parked without a message: a broker other than this Redis).
    released: tuple[str, ...] = ()


class ExecutionGate:
    """Checks and takes a job's execution limits before its attempt is claimed."""

    def __init__(
        self, redis: Redis, *, grace_seconds: float, check_seconds: float | None = None, fair_release: bool = True
    ) -> None:
        """``check_seconds``: a job released when due is next checked by the recovery sweep
        this long after its release (``PULSE_QUEUED_CHECK_SECONDS``); ``None`` leaves its
        deadline as it was. ``fair_release``: a job released when due with its message (a Redis
        broker) waits in its tenant's ready set for its queue's dispatch, in fair order, rather
        than going straight onto its queue's list (``release_due.lua``)."""
        self._redis = redis
        self._fair_release = fair_release
        self._grace = grace_seconds
        self._check = check_seconds
        self._acquire = _ACQUIRE.register(redis)
        self._rate_acquire = _RATE_ACQUIRE.register(redis)
        self._park_slots = _PARK_SLOTS.register(redis)
        self._release_slots = _RELEASE_SLOTS.register(redis)
        self._park_due = _PARK_DUE.register(redis)
        self._release_due = _RELEASE_DUE.register(redis)

    def enter(
        self,
        job_id: str,
        job_type: str,
        tenant_id: str | None,
        declared: ExecutionLimits,
        config: TenantsConfig | None,
        park: Parker | None = None,
        *,
        job_type_rules: bool = True,
    ) -> Verdict:
        """Take a slot and a rate-window hit in every scope; else park the job (with
        ``park``) or say how long to defer. ``job_type_rules=False``: the tenants file's
        jobType and tenant x jobType tables do not apply (a tenant's HTTP jobType: its limits
        are its registration's), but the tenant's ``max_running`` still does."""
        rules = config if job_type_rules else None
        scopes: list[tuple[str | None, ExecutionLimits]] = [
            (None, declared.overridden_by(rules.job_types.get(job_type) if rules else None))
        ]
        if tenant_id is not None:
            scopes.append((tenant_id, _tenant_limits(rules, job_type, tenant_id)))
        scopes = [(scope, limits) for scope, limits in scopes if not limits.empty]
        slots = [(keys.concurrency(job_type, s), lim.max_concurrency) for s, lim in scopes if lim.max_concurrency]
        tenant = config.tenants.get(tenant_id) if config is not None and tenant_id is not None else None
        if tenant is not None and tenant_id is not None and tenant.max_running:
            slots.append((keys.tenant_running(tenant_id), tenant.max_running))
        if not scopes and not slots:
            return Verdict()
        holder = f"{job_id}|{uuid.uuid4().hex}"
        slot_keys = tuple(key for key, _ in slots)
        slot_limits = tuple(most for _, most in slots)
        if slots:
            # '': the scripts time holders by Redis' clock, as leases are (never this host's)
            head = [holder, "", repr(self._grace), keys.job("")]
            full = self._acquire(keys=list(slot_keys), args=[*head, *slot_limits])
            if full is not None and park is not None:
                parked = park()
                if parked is None:
                    return Verdict()  # no such job: the claim drops the message
                full = self._park_slots(
                    keys=[*slot_keys, *_parking(slot_keys)],
                    args=[
                        *head,
                        len(slots),
                        *slot_limits,
                        job_id,
                        parked.tenant_id,
                        parked.broker_list,
                        parked.message,
                    ],
                )
                if full is not None:
                    return Verdict(reason="concurrency", parked=True)
            elif full is not None:
                delay = CONCURRENCY_DEFERRAL_SECONDS * (1 + random.random())
                return Verdict(defer_seconds=delay, reason="concurrency")
        windows = [
            (keys.execution_rate(job_type, scope, item.amount, item.get_expiry()), item.amount, item.get_expiry())
            for scope, limits in scopes
            for item in (parse_rate_limit(limits.rate_limit) if limits.rate_limit else ())
        ]
        if windows:
            slack = rate_slack(min(seconds for _, _, seconds in windows))
            args: list[float | int] = [slack]
            for _, amount, seconds in windows:
                args += [amount, seconds]
            wait = self._rate_acquire(keys=[key for key, _, _ in windows], args=args)
            if wait > 0:
                handed = self.leave(Verdict(holder=holder, slot_keys=slot_keys, slot_limits=slot_limits)).to_publish
                delay = max(MIN_RATE_DEFERRAL_SECONDS, wait)
                parked = park() if park is not None else None
                if parked is not None:
                    self._park_due(
                        keys=[keys.PARKED_UNTIL, keys.PARKED_MESSAGES],
                        args=[job_id, repr(delay), parked.broker_list, parked.message],
                    )
                    return Verdict(reason="rate", parked=True, released=handed)
                return Verdict(defer_seconds=delay * (1 + 0.2 * random.random()), reason="rate", released=handed)
        return Verdict(holder=holder, slot_keys=slot_keys, slot_limits=slot_limits)

    def park_until(self, job_id: str, seconds: float, parked: ParkedMessage, *, unless_parked: bool = False) -> bool:
        """Park ``job_id``'s message for ``seconds`` (a retry's backoff, a wrong worker's wait,
        a copy that arrived early): the workers' tick puts it back on its queue when due, so
        no message waits in a worker meanwhile. ``unless_parked``: a job parked already is
        left as it is (``False``: its release covers this copy)."""
        args = [job_id, repr(max(0.0, seconds)), parked.broker_list, parked.message]
        due = self._park_due(
            keys=[keys.PARKED_UNTIL, keys.PARKED_MESSAGES], args=[*args, "nx"] if unless_parked else args
        )
        return due > 0

    def park_now(self, parked: Sequence[tuple[str, ParkedMessage]]) -> None:
        """Park each ``(job_id, message)`` due now, in one round trip: the workers' tick (within
        a second) puts each into its tenant's ready set, to run in its tenant's turn
        (``release_due.lua``), as the recovery sweep's jobs on a Redis broker are."""
        calls = [
            ([keys.PARKED_UNTIL, keys.PARKED_MESSAGES], [job_id, "0.0", message.broker_list, message.message])
            for job_id, message in parked
        ]
        if calls:
            self._park_due.call_many(self._redis, calls)

    def leave(self, verdict: Verdict) -> Released:
        """Give back the run slots ``verdict`` holds, handing each to the first job parked
        on it (one round trip); the caller publishes the jobs in ``to_publish``."""
        if verdict.holder and verdict.slot_keys:
            return self._release(verdict.slot_keys, verdict.slot_limits, verdict.holder)
        return Released()

    def _release(self, slot_keys: tuple[str, ...], limits: tuple[int, ...], holder: str) -> Released:
        more_keys, more_args = ([keys.WATCH], [repr(self._check)]) if self._check is not None else ([], [])
        return self._release_slots(
            keys=[*slot_keys, *_parking(slot_keys), *more_keys],
            args=[holder, "", repr(self._grace), keys.job(""), len(slot_keys), *limits, *more_args],
        )

    def release_parked(self, *, broker_elsewhere: bool = False) -> Released:
        """The workers' tick: hand on the slots freed without a ``leave`` (a holder that died,
        a handover that lapsed), and put the parked jobs that are due back on their queues
        (the caller publishes those in ``to_publish``). ``broker_elsewhere``: the caller's
        broker is not this Redis; a due job parked without a message then joins its tenant's
        ready set as one parked with its message does (the caller's pump publishes it in fair
        order), rather than being given back to publish at once ahead of every other tenant."""
        found: dict[str, str] = self._redis.hgetall(keys.PARKED_SLOTS)  # type: ignore[assignment]
        released = Released()
        for key, most in found.items():
            released += self._release((key,), (int(most),), "")
        due_keys: list[str] = [keys.PARKED_UNTIL, keys.PARKED_MESSAGES]
        due_args: list[int | str] = [RELEASE_BATCH, "0"]
        if self._check is not None:  # released jobs are checked a queued check after their release
            due_keys, due_args = [*due_keys, keys.WATCH], [RELEASE_BATCH, repr(self._check)]
        if self._fair_release:  # into the ready sets, taken in fair order by the dispatch
            due_args += [*_FAIR_RELEASE_ARGS, "1" if broker_elsewhere else "0"]
        while True:
            due = self._release_due(keys=due_keys, args=due_args)
            released += due
            if due.count < RELEASE_BATCH:
                return released


#: The keys every parking script takes after its slot and parked sets.
def _parking(slot_keys: tuple[str, ...]) -> list[str]:
    """The keys that follow the slot sets in park_slots and release_slots: their parked sets,
    their turns, the parked messages and the registry of slot sets with parked jobs."""
    return [
        *(keys.parked(k) for k in slot_keys),
        *(keys.parked_turns(k) for k in slot_keys),
        keys.PARKED_MESSAGES,
        keys.PARKED_SLOTS,
    ]
