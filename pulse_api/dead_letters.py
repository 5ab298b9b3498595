"""``/v1/dead-letters``: list, read, replay and delete a tenant's dead jobs.

Replay keeps the job id: the job is queued again for a fresh cycle of attempts
(``attempts`` restarts at 0, ``replays`` grows by one) and leaves the dead letters.
"""

from __future__ import annotations

import contextlib
from typing import Any

from flask import g, request
from flask.views import MethodView
from kombu.exceptions import KombuError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pulse_api import door
from pulse_api.openapi import problems
from pulse_api.parsing import PulseBlueprint
from pulse_api.schemas import (
    BulkReplayResultSchema,
    BulkReplaySchema,
    DeadLetterPageSchema,
    DeadLetterQuerySchema,
    JobSchema,
)
from pulse_api.services import Services, services
from pulse_core.broker.celery_app import publish_job
from pulse_core.errors import BrokerUnavailable, InvalidParameter, JobNotFound, Refused
from pulse_core.jobs import Job, JobState
from pulse_core.redis_client import refuses_for_now
from pulse_core.store.job_store import DeadLetterBounds
from pulse_core.submission.parked import parked_message
from pulse_core.tenants import Tenant

blp = PulseBlueprint(
    "dead_letters",
    __name__,
    url_prefix="/v1/dead-letters",
    description="Jobs that ran out of retries or failed permanently",
)

#: The most dead letters one bulk replay touches; call again for more.
BULK_REPLAY_MAX = 1000


@blp.before_request
def _guard() -> None:
    door.guard(lambda tenant: tenant.max_payload_bytes)


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no dead letter {job_id!r}")


def replay(svc: Services, tenant: Tenant, job_id: str) -> Job | None:
    """Queue one dead letter again, through the door like a submit (rate limit, backlog);
    ``None`` if the tenant has no such dead letter.

    The replay is watched from the moment it is queued: if the process dies before the
    step below, the sweep publishes it. With a Redis broker it is parked due now, and the
    workers' tick (every second) releases it into its tenant's ready set, to be dispatched in
    fair order like a job admitted then. With another broker it is published at once: if
    the broker refuses, it goes back among the dead letters as it was (a 503 that is true);
    if even that fails it stays queued and watched, and will run, so it is answered as replayed.
    """
    dead = svc.dead_letters.get(tenant.tenant_id, job_id)
    if dead is None:
        return None
    try:
        verdict = svc.admission.readmit(tenant, dead, check_in=svc.settings.queued_check_seconds)
    except (RedisConnectionError, RedisTimeoutError):
        # The answer was lost in flight (after redis-py's retry): the script may have run. The
        # record says whether it did (queued at the next cycle, not yet claimed); if Redis
        # cannot be asked either, the error stands.
        job = svc.store.get(job_id)
        if job is None or not _readmitted(job, dead):
            raise
    else:
        if verdict.refusal is not None:
            raise verdict.refusal
        job = verdict.job
        if job is None:
            return None
    fair = svc.store.dispatcher
    if fair is not None and fair.inline:
        # Due now, released by the workers' tick into its tenant's ready set and dispatched in
        # fair order, as a job admitted now is: a replay of many dead letters is a tenant's
        # volume like any other, never a run of messages ahead of every other tenant's jobs.
        with contextlib.suppress(RedisError):  # queued and watched: the sweep publishes it
            svc.parking.park_until(job.job_id, 0.0, parked_message(svc.celery, fair, job))
        return job
    try:
        publish_job(svc.celery, job)
    except (KombuError, OSError, RedisError) as exc:
        try:
            bounds = DeadLetterBounds(most=tenant.max_dead_letters, days=tenant.dead_letter_days)
            svc.store.finalize(job, JobState.DEAD, from_="replayed", dead_letters=bounds)
        except RedisError:
            return job  # queued and watched: the sweep publishes it
        raise BrokerUnavailable("the broker did not take the job; retry later") from exc
    return job


def _unavailable(error: RedisError) -> bool:
    """Whether Redis is out of reach or refuses work for now (answered 503), not a bug (500)."""
    return isinstance(error, RedisConnectionError | RedisTimeoutError) or refuses_for_now(error)


def _readmitted(job: Job, dead: Job) -> bool:
    """Whether ``job`` is the dead letter ``dead`` queued again (``readmit.lua``), not yet claimed."""
    return job.state is JobState.QUEUED and job.cycle == dead.cycle + 1 and job.attempts == 0


@blp.route("")
class DeadLetterList(MethodView):
    @blp.arguments(DeadLetterQuerySchema, location="query")
    @blp.response(200, DeadLetterPageSchema)
    @problems(blp, 401, 422)
    @blp.doc(security=[{"bearer": []}])
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List dead letters, newest first; pass ``nextCursor`` back as ``cursor``."""
        page = services().dead_letters.page(
            g.tenant.tenant_id,
            limit=query["limit"],
            cursor=query.get("cursor"),
            job_type=query.get("jobType"),
        )
        return {"items": [job.document() for job in page.items], "nextCursor": page.next_cursor}


@blp.route("/replay")
class BulkReplay(MethodView):
    @blp.arguments(BulkReplaySchema)
    @blp.response(200, BulkReplayResultSchema)
    @problems(blp, 400, 401, 413, 415, 422, 429, 503)
    @blp.doc(security=[{"bearer": []}])
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replay the dead letters matching a filter (at most 1000 per call); ``dryRun`` counts.

        The body is required, as the document says: ``{}`` (every dead letter) is a
        choice the caller writes out, never what an empty request means.
        """
        if not request.get_data(cache=True):
            raise InvalidParameter("body", "a JSON body is required; send {} to replay every dead letter")
        svc = services()
        tenant_id = g.tenant.tenant_id
        after, before = body.get("deadAfter"), body.get("deadBefore")
        matched = svc.dead_letters.select(
            tenant_id,
            job_type=body.get("jobType"),
            since_ms=after.timestamp() * 1000 if after else None,
            until_ms=before.timestamp() * 1000 if before else None,
            limit=BULK_REPLAY_MAX,
        )
        replayed: list[str] = []
        if not body["dryRun"]:
            for job_id in matched:
                try:
                    if replay(svc, g.tenant, job_id):
                        replayed.append(job_id)
                except (Refused, BrokerUnavailable, RedisError) as exc:
                    if not replayed or (isinstance(exc, RedisError) and not _unavailable(exc)):
                        raise  # nothing replayed: the refusal (a 4xx, or a 503) is the answer
                    # the ones replayed so far are the answer (jobIds); call again for the rest. A
                    # Redis that stopped taking writes (full, a failover) or answering stops it
                    # too: a 503 would say nothing was replayed, yet those are no dead letters now
                    break
        ids = matched if body["dryRun"] else replayed
        return {"matched": len(matched), "replayed": len(replayed), "dryRun": body["dryRun"], "jobIds": ids}


@blp.route("/<dead_letter_id:job_id>")
class DeadLetter(MethodView):
    @blp.response(200, JobSchema)
    @problems(blp, 401, 404)
    @blp.doc(security=[{"bearer": []}])
    def get(self, job_id: str) -> dict[str, Any]:
        """Read one dead letter: the dead job with its last error."""
        job = services().dead_letters.get(g.tenant.tenant_id, job_id)
        if job is None:
            raise _not_found(job_id)
        return job.document()

    @blp.response(204)
    @problems(blp, 401, 404)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, job_id: str) -> None:
        """Drop a dead letter; the job stays readable at /v1/jobs until its retention ends."""
        if not services().dead_letters.delete(g.tenant.tenant_id, job_id):
            raise _not_found(job_id)


@blp.route("/<dead_letter_id:job_id>/replay")
class ReplayOne(MethodView):
    @blp.response(202, JobSchema, description="Queued again under the same jobId")
    @problems(blp, 401, 404, 429, 503)
    @blp.doc(security=[{"bearer": []}])
    def post(self, job_id: str) -> dict[str, Any]:
        """Replay one dead letter: a fresh cycle of attempts under the same jobId."""
        job = replay(services(), g.tenant, job_id)
        if job is None:
            raise _not_found(job_id)
        return job.document()
