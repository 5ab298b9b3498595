"""A parked job's message (``parked_message``): what starts its next attempt when it is
released from parking (a retry's backoff, an execution limit, a replayed dead letter, a
job the recovery sweep found, each due in its tenant's turn).

It sits in this room because it joins two that may not import each other
(``tests/test_architecture.py``): the message is the broker's (``encode_message``), the
parked record the guards' (``ParkedMessage``); ``submission`` may import every room.
"""

from __future__ import annotations

from celery import Celery

from pulse_core.broker.celery_app import encode_message, waiting_lists
from pulse_core.guards.execution_limits import ParkedMessage
from pulse_core.jobs import Job
from pulse_core.store.dispatch import Dispatcher


def parked_message(app: Celery, fair: Dispatcher | None, job: Job) -> ParkedMessage:
    """What starts ``job``'s next attempt when it is released from parking (``ParkedMessage``):
    its message, for its queue's first list, with a Redis broker the dispatcher publishes on
    (``fair.inline``); nothing but its tenant with another (the releasing worker publishes it)."""
    if fair is None or not fair.inline:
        return ParkedMessage(tenant_id=job.tenant_id)
    message, _ = encode_message(app, job)
    return ParkedMessage(waiting_lists(job.queue)[0], message, job.tenant_id)
