"""Every Redis key Pulse writes, built in one place.

All keys start with ``pulse:`` so that an operator can find (and a test can
clear) Pulse's state without touching the broker's own keys.
"""

from __future__ import annotations

PREFIX = "pulse"

#: Sorted set of announced jobTypes, scored by the time (epoch seconds) their
#: announcement expires. Workers refresh it; the API reads live members.
JOB_TYPES = f"{PREFIX}:jobtypes"


def job(job_id: str) -> str:
    """Hash holding one job record (the source of truth for its state)."""
    return f"{PREFIX}:job:{job_id}"


def tenant_jobs(tenant_id: str) -> str:
    """Sorted set of a tenant's job ids, scored by creation time in milliseconds."""
    return f"{PREFIX}:tenant:{tenant_id}:jobs"
