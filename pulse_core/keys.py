"""Every Redis key Pulse writes, built in one place.

All keys start with ``pulse:`` so that an operator can find (and a test can
clear) Pulse's state without touching the broker's own keys.

Collision-free by construction: ``:`` separates a key's parts, so a part that
may hold one (a jobType such as ``a:tenant:b``) goes through ``part``, which
escapes ``%`` and ``:``; two different part lists never build the same key.
Parts that cannot hold ``:`` (tenant ids, queue names, server-made job ids and
digests) are unchanged by it, so existing keys keep their names.
"""

from __future__ import annotations

PREFIX = "pulse"


def part(text: str) -> str:
    """One key part that cannot be mistaken for a separator: ``%`` -> ``%25``, ``:`` -> ``%3A``."""
    return text.replace("%", "%25").replace(":", "%3A")


#: Sorted set of announced jobTypes, scored by the time (epoch seconds) their
#: announcement expires. Workers refresh it; the API reads live members.
JOB_TYPES = f"{PREFIX}:jobtypes"

#: Hash jobType -> JSON retry/timeout policy its workers declared (read by the API).
JOB_TYPE_POLICIES = f"{PREFIX}:jobtype-policies"

#: Sorted set of job ids that something must happen to by a deadline (epoch seconds):
#: a running attempt's lease, or a scheduled/retrying job's due time plus grace. The
#: recovery sweep republishes what is overdue.
WATCH = f"{PREFIX}:watch"

#: Lock held (SET NX PX) by the one worker running a recovery sweep.
SWEEP_LOCK = f"{PREFIX}:sweep-lock"


def job(job_id: str) -> str:
    """Hash holding one job record (the source of truth for its state)."""
    return f"{PREFIX}:job:{part(job_id)}"


def tenant_jobs(tenant_id: str) -> str:
    """Sorted set of a tenant's job ids, scored by creation time in milliseconds (a tie is
    scored 1/1024 ms above the newest entry: ``pulse_core.store.listing``)."""
    return f"{PREFIX}:tenant:{part(tenant_id)}:jobs"


def tenant_counts(tenant_id: str) -> str:
    """Hash of a tenant's counters, read and written by the scripts in one ``HMGET`` and one
    ``HSET`` each (``pulse_core/store/lua/includes/stored_bytes.lua``, ``account_*``):

    - ``pending``: how many of its jobs are not yet final (the backlog): +1 in the same script
      that creates a record, -1 in the same script that moves a record from a non-final to a
      final state;
    - ``held``: bytes held by its records that do not expire (jobs not yet final and dead
      letters): the "held" part of the storage budget (``max_stored_bytes``);
    - ``total``, ``oldest`` and ``b<n>``: the bytes its expiring records (finished jobs in
      their retention) hold, by hour bucket ``n``, their total and the oldest bucket still
      counted; a bucket leaves as its records expire (dropped by the next script that reads it);
    - ``newest``: the newest score of its listing index (``tenant_jobs``), so a new entry is
      placed after it without reading the index;
    - ``seq``: the arrival counter that orders its jobs in its ready sets (``ready``).

    No expiry: it lives as long as the tenant, with at most a retention's worth of hour
    buckets (170 for 7 days), like the tenant's index."""
    return f"{PREFIX}:tenant:{part(tenant_id)}:counts"


#: Prefix of the rate-limit keys (GCRA, ``pulse_core.guards.rate_limits``). Not the
#: ``pulse:ratelimit`` of the moving-window lists kept before: a process of the old
#: version never reads a string of the new as its list, nor the reverse.
RATE_LIMIT_PREFIX = f"{PREFIX}:gcra"


def rate_limit(limits_key: str) -> str:
    """String holding one tenant limit's theoretical arrival time (epoch microseconds,
    Redis' clock), for one ``limits`` key (``RateLimitItem.key_for(...)``); it expires when
    the limit is wholly unused again."""
    return f"{RATE_LIMIT_PREFIX}:{part(limits_key)}"


def idempotency(tenant_id: str, key_digest: str) -> str:
    """String ``<body fingerprint> <jobId>`` for one tenant's idempotency key (hashed)."""
    return f"{PREFIX}:tenant:{part(tenant_id)}:idem:{part(key_digest)}"


def tenant_dead_letters(tenant_id: str) -> str:
    """Sorted set of a tenant's dead job ids, scored by when they died (epoch milliseconds; ties
    broken as in ``tenant_jobs``)."""
    return f"{PREFIX}:tenant:{part(tenant_id)}:dead"


def ready(queue: str, tenant_id: str) -> str:
    """Sorted set of ``tenant_id``'s jobs waiting on ``queue`` for the dispatcher
    (``pulse_core.store.dispatch``): job id -> ``(9 - priority) * 1e15 + arrival`` (the
    tenant's ``seq`` in ``tenant_counts``), so its highest priority comes first, then first
    come first served. Gone when empty."""
    return f"{ready_prefix(queue)}{part(tenant_id)}"


def ready_prefix(queue: str) -> str:
    """What ``ready`` puts before the tenant id (the dispatch scripts build the key from it)."""
    return f"{PREFIX}:ready:{part(queue)}:"


def active(queue: str) -> str:
    """Sorted set of the tenants with jobs in a ready set of ``queue``, scored by their
    virtual time (the next job's place in the weighted fair order). A tenant leaves it
    when its ready set is empty."""
    return f"{PREFIX}:active:{part(queue)}"


def dispatch_state(queue: str) -> str:
    """Hash of ``queue``'s dispatcher: ``v`` (the virtual time of the last job dispatched)
    and ``w:<tenant>`` (an active tenant's weight). Deleted when no tenant is active on the
    queue."""
    return f"{PREFIX}:dispatch:{part(queue)}"


#: Set of the queues with at least one active tenant: the sweep dispatches each (a queue
#: leaves it when its last tenant goes idle). Bounded by the queues the config names.
DISPATCH_QUEUES = f"{PREFIX}:dispatch-queues"


def queue_job_types(queue: str) -> str:
    """Sorted set of the jobTypes the live workers consuming ``queue`` run (``pulse_core.store.
    job_types``), scored by when the last announcement of each lapses (epoch seconds), so a job
    on a queue none of whose workers has its handler is known as such (it dies after the
    unknown-jobType grace, rather than going back to that queue for ever). Lapsed members are
    trimmed at each announcement; the key expires with its last member."""
    return f"{PREFIX}:queue-jobtypes:{part(queue)}"


def queue_capacity(queue: str) -> str:
    """Sorted set of the pool concurrency each live worker consuming ``queue`` announced
    (``pulse_core.store.capacity``): member ``<worker hostname>:<concurrency>``, scored by the
    time (epoch seconds) its announcement expires. Lapsed members are trimmed at each
    announcement; the key expires with the last one (an ``EXPIRE`` of the announcement's TTL)."""
    return f"{PREFIX}:queue-capacity:{part(queue)}"


def concurrency(job_type: str, tenant_id: str | None = None) -> str:
    """Sorted set of the job ids holding a run slot of ``job_type`` (of one tenant, or
    of all): member -> when its grace before the claim ends (epoch seconds)."""
    scope = f":tenant:{part(tenant_id)}" if tenant_id is not None else ""
    return f"{PREFIX}:slots:{part(job_type)}{scope}"


def tenant_running(tenant_id: str) -> str:
    """Sorted set of the job ids holding one of a tenant's run slots (its ``max_running``
    from the tenants file, across every jobType), as ``concurrency``."""
    return f"{PREFIX}:running:{part(tenant_id)}"


def parked(slot_key: str) -> str:
    """Sorted set of the jobs parked on the full run-slot set ``slot_key`` (job id -> its turn,
    ``parked_turns``), handed a slot in that order as slots free up; gone when empty."""
    return f"{PREFIX}:parked:{slot_key}"


def parked_turns(slot_key: str) -> str:
    """Hash of the turns of the jobs parked on ``slot_key``, so that tenants take turns there
    (one tenant's flood of a shared limited jobType cannot hold another's job behind it):
    ``t:<tenant>`` -> the turn of the tenant's last parked job, ``released`` -> the turn of the
    last job handed a slot. A job parks at one turn after the later of the two. Deleted with
    the parked set; a tenant whose turns are all past is pruned every 100 turns."""
    return f"{PREFIX}:parked-turns:{slot_key}"


#: Hash of job id -> ``<broker list>\n<message>`` of a parked job (on a full run-slot set, or
#: until a rate window allows): pushed back onto its queue when it is released, then removed.
PARKED_MESSAGES = f"{PREFIX}:parked-messages"

#: Hash of the run-slot sets with parked jobs -> their most holders (the workers' tick hands
#: on slots freed by a holder that died); a set leaves it when its parked set empties.
PARKED_SLOTS = f"{PREFIX}:parked-slots"

#: Sorted set of the jobs parked until a time (a full execution-rate window): job id -> when
#: (epoch s). The workers' tick releases the due ones in bulk.
PARKED_UNTIL = f"{PREFIX}:parked-until"


def homeless_since(job_id: str) -> str:
    """String: when (epoch s) a message of the job first found no live worker announcing its
    jobType (``pulse_worker.task.place``), so that its grace period counts across the times
    it is parked and released; each such message renews it, and it expires an hour past the
    grace period after the last."""
    return f"{PREFIX}:homeless:{part(job_id)}"


def pushed_back(job_id: str) -> str:
    """String, for about a second: a worker without the job's handler put its message straight
    back on its queue (``pulse_worker.task.place``); while it lives, the next such worker
    parks the job instead, so a job no idle worker can run does not loop between the queue and
    workers that cannot."""
    return f"{PREFIX}:pushed-back:{part(job_id)}"


#: Prefix of the execution rate windows (``pulse_core.guards.execution_limits``).
EXECUTION_RATE_PREFIX = f"{PREFIX}:exec-rate"


def execution_rate(job_type: str, tenant_id: str | None, limit: int, seconds: int) -> str:
    """List of the start times in one execution-rate window (``limit`` per ``seconds``) of
    ``job_type`` (of one tenant, or of all), newest first; trimmed to ``limit``, expiring."""
    scope = f":tenant:{part(tenant_id)}" if tenant_id is not None else ""
    return f"{EXECUTION_RATE_PREFIX}:{part(job_type)}{scope}:{limit}/{seconds}"


def http_handlers(tenant_id: str) -> str:
    """Hash of one tenant's HTTP handler registrations: jobType -> JSON record (its
    signing secrets encrypted). Capped per tenant (``pulse_core.http_handlers.registrations``)."""
    return f"{PREFIX}:tenant:{part(tenant_id)}:http-handlers"


#: Set of the tenant ids that have at least one HTTP handler registration (so start-up
#: can tell whether ``PULSE_SECRET_KEY`` is needed). Bounded by the tenants file.
HTTP_HANDLER_TENANTS = f"{PREFIX}:http-handler-tenants"


def http_attempt_token(job_id: str) -> str:
    """String: digest of the per-attempt token a long (202) delivery reports with,
    ``<attempt> <cycle> <sha256>``; deleted when the attempt reports its outcome (kept as
    ``http_spent_token``), else
    expires ``TOKEN_TTL_SECONDS`` (7 days) after the hand-off (``http_handlers.attempts``)."""
    return f"{PREFIX}:http-token:{part(job_id)}"


def http_spent_token(job_id: str) -> str:
    """String: the last attempt token of a job that reported its outcome,
    ``<token sha256> <outcome sha256>``, so that the same report sent again (its answer was
    lost) is answered as the first; expires ``SPENT_TOKEN_TTL_SECONDS`` (a day) after it
    (``http_handlers.attempts``)."""
    return f"{PREFIX}:http-spent:{part(job_id)}"
