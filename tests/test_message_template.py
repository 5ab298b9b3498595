"""The inline message rendered from a template is, byte for byte, what Celery and kombu build."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from kombu.utils.json import dumps as kombu_dumps

from pulse_core.broker import celery_app, message_template
from pulse_core.broker.celery_app import RUN_JOB_TASK, create_celery, encode_message
from pulse_core.broker.message_template import MessageTemplate, reference_envelope, render_message
from pulse_core.jobs import Job, utc_now
from pulse_core.settings import Settings

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("countdown", "limits", "attempt", "cycle", "priority", "trace"),
    [
        (None, (None, None), 1, 0, 4, {}),
        (None, (40, 30), 3, 2, 0, {}),
        (12.5, (None, None), 1, 0, 9, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}),
        (3600, (3610, 3600), 7, 1, 2, {"traceparent": "00-x-y-01", "tracestate": "k=v"}),
        (0, (11, 1), 1, 0, 4, {}),  # a zero countdown is no ETA, as in Celery
    ],
)
def test_template_renders_what_the_machinery_builds(
    settings: Settings,
    countdown: float | None,
    limits: tuple[int | None, int | None],
    attempt: int,
    cycle: int,
    priority: int,
    trace: dict[str, str],
) -> None:
    # given a template built once for the app, and one job's varying parts
    app = create_celery(settings)
    template = MessageTemplate.build(app, RUN_JOB_TASK)
    job_id, job_type, lane = "5f0c7a1e-0000-4000-8000-000000000001", "billing.invoice:v2", "default/acme"
    # when the message is rendered from the template
    rendered = render_message(
        template,
        job_id=job_id,
        job_type=job_type,
        attempt=attempt,
        cycle=cycle,
        lane=lane,
        priority=priority,
        countdown=countdown,
        time_limit=limits[0],
        soft_time_limit=limits[1],
        extra_headers=trace,
        task_id="task-id-1",
        delivery_tag="tag-1",
        now=NOW,
    )
    # then it is the same bytes as the envelope Celery's as_task_v2 and kombu's JSON make
    eta = (NOW + timedelta(seconds=countdown)).isoformat() if countdown else None
    expected = kombu_dumps(
        reference_envelope(
            app,
            RUN_JOB_TASK,
            task_id="task-id-1",
            job_id=job_id,
            job_type=job_type,
            eta=eta,
            time_limit=limits[0],
            soft_time_limit=limits[1],
            argsrepr=repr((job_id,)),
            attempt=attempt,
            cycle=cycle,
            lane=lane,
            priority=priority,
            delivery_tag="tag-1",
            extra_headers=trace,
        )
    )
    assert rendered == expected
    decoded = json.loads(rendered)
    assert decoded["headers"]["shadow"] == job_type  # Flower shows the jobType
    assert decoded["headers"]["id"] == decoded["headers"]["root_id"] == decoded["properties"]["correlation_id"]


def test_messages_of_more_kinds_than_a_template_keeps_each_render_what_the_machinery_builds(
    settings: Settings,
) -> None:
    # given a template, and more kinds of message (jobType, lane, priority, time limits) than
    # it keeps filled in, a jobType with braces among them
    app = create_celery(settings)
    template = MessageTemplate.build(app, RUN_JOB_TASK)
    kinds = [
        (
            f"kind.{n}{{x}}" if n % 7 == 0 else f"kind.{n}",
            f"lane/{n % 3}",
            n % 10,
            (None, None) if n % 2 else (n + 10, n),
        )
        for n in range(message_template._KINDS + 50)
    ]
    # when each kind's message is rendered, twice over, interleaved
    for round_ in range(2):
        for n, (job_type, lane, priority, (hard, soft)) in enumerate(kinds):
            if round_ and n % 5:
                continue  # the second round: a sample, after the keeping started over
            job_id = f"job-{round_}-{n}"
            rendered = render_message(
                template, job_id=job_id, job_type=job_type, attempt=1, cycle=0, lane=lane, priority=priority,
                countdown=None, time_limit=hard, soft_time_limit=soft, task_id=f"task-{n}", delivery_tag=f"tag-{n}",
            )  # fmt: skip
            # then each is the envelope Celery's and kombu's own code build for it
            expected = kombu_dumps(
                reference_envelope(
                    app, RUN_JOB_TASK, task_id=f"task-{n}", job_id=job_id, job_type=job_type, eta=None,
                    time_limit=hard, soft_time_limit=soft, argsrepr=repr((job_id,)), attempt=1, cycle=0,
                    lane=lane, priority=priority, delivery_tag=f"tag-{n}",
                )
            )  # fmt: skip
            assert rendered == expected, (job_type, lane, priority, hard, soft)
    # and the template keeps at most its cap of kinds
    assert len(template._kinds) <= message_template._KINDS


def test_a_forked_process_renders_its_own_origin(settings: Settings) -> None:
    # given a template built in this process
    app = create_celery(settings)
    job = Job(job_id="job-fork", tenant_id="acme", job_type="diag.echo", queue="default", created_at=utc_now())
    here = json.loads(encode_message(app, job)[0])["headers"]["origin"]
    assert str(os.getpid()) in here
    # when a forked child encodes a message with the same app
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its message's origin and leave at once
        try:
            os.write(write, json.loads(encode_message(app, job)[0])["headers"]["origin"].encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        there = pipe.read()
    os.waitpid(pid, 0)
    # then the child's message names the child (Celery's anon_nodename holds the pid)
    assert str(pid) in there and there != here
    assert app in celery_app._templates
