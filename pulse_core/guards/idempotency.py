"""Idempotent submission: one job per (tenant, idempotency key, job body).

The key maps, for ``ttl`` seconds, to ``<fingerprint> <jobId>``. It is written by
the admission script (``pulse_core.guards.admission``) in the same atomic step that
creates the job, so N concurrent identical requests from any number of processes
make exactly one job; a request whose key exists gets that job back when its
fingerprint matches and an ``IdempotencyConflict`` when it does not. If the
job cannot be published afterwards, the key is released with the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pulse_core import json_text, keys

#: The job fields that make two submissions "the same job": the whole body but the tenant
#: and the key (a key sent again with another priority, delay or retry count is another
#: request, refused like another payload, not answered with a job that ignores it).
FINGERPRINT_FIELDS = ("jobType", "payload", "metadata", "options")


def _canonical_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The options as loaded (``runAt`` a datetime: compared as the instant it names, so
    ``Z`` and ``+00:00`` are one time); none and ``{}`` are the same."""
    if not options:
        return None
    return {name: value.timestamp() if isinstance(value, datetime) else value for name, value in options.items()}


def fingerprint(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the job's identity (key order does not matter).

    ``tenantId`` (always the key's tenant) and the idempotency key itself are left
    out, so sending the key in the header or in the body is the same request.
    ``body`` is the loaded body (``options.runAt`` a datetime).
    """
    identity = {name: body.get(name) or None for name in FINGERPRINT_FIELDS}
    identity["options"] = _canonical_options(body.get("options"))
    canonical = json_text.canonical(identity)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def store_key(tenant_id: str, idempotency_key: str) -> str:
    """The Redis key remembering ``idempotency_key`` for ``tenant_id`` (hashed: any length)."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return keys.idempotency(tenant_id, digest)
