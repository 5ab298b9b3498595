"""The one generic task: claim -> route by jobType -> run the handler -> record the outcome."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from pulse_core import logs, metrics, telemetry
from pulse_core.celery_setup import RUN_JOB_TASK
from pulse_core.context import JobContext
from pulse_core.errors import JobFailed, UnknownJobType
from pulse_core.handlers import HandlerSpec
from pulse_core.jobs import Job, JobState
from pulse_core.metrics import Outcome
from pulse_worker import observe
from pulse_worker.outcome import describe_error, encode_result
from pulse_worker.runtime import WorkerRuntime

log = logging.getLogger("pulse.worker")


def run_job(runtime: WorkerRuntime, job_id: str) -> None:
    """Run one attempt of ``job_id``: the whole pipeline, step by step."""
    job = claim(runtime, job_id)
    if job is None:
        return
    with observe.attempt(job):
        spec = route(runtime, job)
        if spec is None:
            return
        execute(runtime, job, spec)


def claim(runtime: WorkerRuntime, job_id: str) -> Job | None:
    """Step 1: atomically claim the attempt; a redelivered or stale message claims nothing."""
    outcome = runtime.store.claim(job_id)
    if outcome.job is None:
        log.warning("job %s not claimed: it is %s", job_id, outcome.refused_state)
    return outcome.job


def route(runtime: WorkerRuntime, job: Job) -> HandlerSpec | None:
    """Step 2: find the handler registered for the job's jobType."""
    spec = runtime.registry.get(job.job_type)
    if spec is None:
        record_failure(runtime, job, UnknownJobType(job.job_type))
    return spec


def execute(runtime: WorkerRuntime, job: Job, spec: HandlerSpec) -> None:
    """Step 3: call the handler and record its result or its error."""
    ctx = JobContext(
        job_id=job.job_id,
        tenant_id=job.tenant_id,
        job_type=job.job_type,
        attempt=job.attempts,
        trace_id=job.trace_id,
    )
    try:
        result_json = encode_result(spec.fn(job.payload, ctx), runtime.settings.result_max_bytes)
    except Exception as exc:
        record_failure(runtime, job, exc)
        return
    runtime.store.finish(job.job_id, JobState.SUCCEEDED, result_json=result_json)
    metrics.job_finished(job, Outcome.SUCCEEDED)
    log.info("job %s (%s) succeeded on attempt %d", job.job_id, job.job_type, job.attempts)


def record_failure(runtime: WorkerRuntime, job: Job, exc: BaseException) -> None:
    """Step 3, failed: the job is dead with its last error."""
    if not isinstance(exc, JobFailed):
        log.exception("job %s (%s) raised", job.job_id, job.job_type, exc_info=exc)
    telemetry.record_error(exc)
    runtime.store.finish(job.job_id, JobState.DEAD, error=describe_error(exc))
    metrics.job_finished(job, Outcome.DEAD)
    log.info("job %s (%s) is dead: %s", job.job_id, job.job_type, type(exc).__name__)


def install(app: Celery, runtime: WorkerRuntime) -> Any:
    """Register the generic task on ``app``, bound to ``runtime``."""

    @app.task(name=RUN_JOB_TASK, ignore_result=True)
    def pulse_run_job(job_id: str) -> None:
        with logs.job_context(jobId=job_id):
            run_job(runtime, job_id)

    return pulse_run_job
