"""The invariants every fault test checks after its fault, read from Redis itself.

- every job answered 2xx reaches a final state (``wait_final``, in the tests);
- ``pending`` (the backlog count) equals the non-final records of each tenant;
- no ``pulse:`` key is left without an owner or an expiry: a record with no TTL is
  non-final or a dead letter; every other key without a TTL is one of the long-lived
  structures Pulse trims itself;
- the storage budget's counters equal the bytes the records say they hold (``storedBytes``):
  held for records without a TTL, retained for expiring ones (``stored_bytes_mismatches``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from redis import Redis

from pulse_core import keys
from pulse_core.jobs import FINAL_STATES, JobState

#: Key shapes that live without a TTL because the code that writes them also trims them.
_LONG_LIVED = (
    keys.WATCH,
    keys.JOB_TYPES,
    keys.JOB_TYPE_POLICIES,
    keys.DISPATCH_QUEUES,
    f"{keys.PREFIX}:active:",
    f"{keys.PREFIX}:ready:",
    f"{keys.PREFIX}:dispatch:",
    f"{keys.PREFIX}:slots:",
    f"{keys.PREFIX}:running:",
    f"{keys.PREFIX}:parked:",
    f"{keys.PREFIX}:parked-turns:",
    keys.PARKED_MESSAGES,
    keys.PARKED_SLOTS,
    keys.PARKED_UNTIL,
)
_FINAL = {state.value for state in FINAL_STATES}
#: Scratch keys the tests write for themselves (not Pulse's).
TEST_PREFIX = f"{keys.PREFIX}:test:"


def non_final_by_tenant(redis: Redis) -> Counter[str]:
    """Tenant id -> how many of its job records are not in a final state."""
    counts: Counter[str] = Counter()
    for key in redis.scan_iter(match=keys.job("*"), count=1000):
        state, tenant = redis.hmget(key, ["state", "tenantId"])
        if state is not None and tenant is not None and state not in _FINAL:
            counts[str(tenant)] += 1
    return counts


#: Both sides of the backlog invariant read in one script run: while workers still finish
#: jobs, a scan of the records and a later read of ``pending`` could disagree for a moment
#: though neither is wrong. Test-only (KEYS blocks Redis; fine on a test's private server).
_BACKLOG_SNAPSHOT = """
local counts = {}
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  if redis.call('TYPE', key).ok == 'hash' then
    local f = redis.call('HMGET', key, 'state', 'tenantId')
    if f[1] and f[2] and not string.find(ARGV[2], ',' .. f[1] .. ',', 1, true) then
      counts[f[2]] = (counts[f[2]] or 0) + 1
    end
  end
end
local flat = {}
for tenant, n in pairs(counts) do flat[#flat + 1] = tenant; flat[#flat + 1] = n end
local counted = {}
for _, key in ipairs(redis.call('KEYS', ARGV[3])) do
  counted[#counted + 1] = key; counted[#counted + 1] = redis.call('HGET', key, 'pending') or '0'
end
return {counted, flat}
"""


def backlog_mismatches(redis: Redis) -> dict[str, tuple[int, int]]:
    """Tenant -> (pending count, non-final records) wherever the two differ, both read at one
    instant (``_BACKLOG_SNAPSHOT``)."""
    final = "," + ",".join(sorted(_FINAL)) + ","
    pending_flat, actual_flat = redis.eval(  # type: ignore[misc]
        _BACKLOG_SNAPSHOT, 0, keys.job("*"), final, keys.tenant_counts("*")
    )
    actual = {str(actual_flat[i]): int(actual_flat[i + 1]) for i in range(0, len(actual_flat), 2)}
    counted = {_counts_tenant(str(pending_flat[i])): int(pending_flat[i + 1]) for i in range(0, len(pending_flat), 2)}
    tenants = set(actual) | set(counted)
    return {
        tenant: (counted.get(tenant, 0), actual.get(tenant, 0))
        for tenant in sorted(tenants)
        if counted.get(tenant, 0) != actual.get(tenant, 0)
    }


def pending_by_tenant(redis: Redis) -> dict[str, int]:
    """Tenant -> its backlog count (``pending`` in its ``keys.tenant_counts``), every tenant."""
    found = list(redis.scan_iter(match=keys.tenant_counts("*"), count=1000))
    return {_counts_tenant(key): int(redis.hget(key, "pending") or 0) for key in found}


def _counts_tenant(key: str) -> str:
    """The tenant id of its counts key (``keys.tenant_counts``), unescaped (``keys.part``)."""
    head, tail = keys.tenant_counts("\0").split("\0")
    return key[len(head) : len(key) - len(tail)].replace("%3A", ":").replace("%25", "%")


def stored_bytes_mismatches(redis: Redis, tenants: Iterable[str]) -> dict[str, tuple[int, int, int, int]]:
    """Tenant -> (held counted, held in records, retained counted, retained in records) wherever
    a count differs from the records' ``storedBytes`` (held: records without a TTL, retained:
    expiring ones). Only ``tenants``: another test may remove records by hand."""
    wanted = set(tenants)
    held: Counter[str] = Counter()
    retained: Counter[str] = Counter()
    for key in redis.scan_iter(match=keys.job("*"), count=1000):
        tenant, stored = redis.hmget(key, ["tenantId", "storedBytes"])
        if tenant in wanted and stored:
            (held if redis.ttl(key) == -1 else retained)[str(tenant)] += int(stored)
    found = {}
    for tenant in sorted(wanted):
        counted_held_text, counted_retained_text = redis.hmget(keys.tenant_counts(tenant), ["held", "total"])
        counted_held, counted_retained = int(counted_held_text or 0), int(counted_retained_text or 0)
        if (counted_held, counted_retained) != (held[tenant], retained[tenant]):
            found[tenant] = (counted_held, held[tenant], counted_retained, retained[tenant])
    return found


def unowned_keys(redis: Redis) -> list[str]:
    """``pulse:`` keys with no expiry that nothing will ever trim or finish."""
    found: list[str] = []
    dead_letters = {
        member
        for key in redis.scan_iter(match=keys.tenant_dead_letters("*"), count=1000)
        for member in redis.zrange(key, 0, -1)
    }
    for key in redis.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
        if key.startswith(TEST_PREFIX) or redis.ttl(key) != -1:
            continue
        if key in _LONG_LIVED or key.startswith(_LONG_LIVED):
            continue
        if key.startswith(keys.job("")):
            state = redis.hget(key, "state")
            job_id = key[len(keys.job("")) :]
            if state not in _FINAL or (state == JobState.DEAD.value and job_id in dead_letters):
                continue
        elif key.endswith(":jobs") or key.endswith(":dead"):
            continue  # a tenant's index and dead letters: trimmed as their records end
        elif key.endswith(":counts"):
            continue  # a tenant's counters: one hash a tenant, its buckets dropped as they pass
        found.append(key)
    return sorted(found)
