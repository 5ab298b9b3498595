"""Ids drawn from one ``os.urandom`` read are version-4 UUIDs, each handed out once."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from pulse_core import ids
from pulse_core.broker.celery_app import RUN_JOB_TASK, create_celery
from pulse_core.broker.message_template import MessageTemplate, render_message
from pulse_core.jobs import new_job_id, new_trace_id
from pulse_core.settings import Settings


def test_ids_are_version_4_uuids_written_as_uuid4_writes_them() -> None:
    # Given: many ids of both shapes
    texts = [ids.uuid4_text() for _ in range(5000)]
    hexes = [ids.uuid4_hex() for _ in range(5000)]
    # Then: each parses as an RFC 4122 version-4 UUID and reads back the same
    for text in texts:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    for text in hexes:
        parsed = uuid.UUID(hex=text)
        assert (parsed.hex, parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    # And: none repeats, across both shapes
    assert len({uuid.UUID(t) for t in texts + hexes}) == 10000


def test_the_job_id_trace_id_and_message_ids_come_from_the_pool() -> None:
    # Given: the pool holding exactly one block (_CHUNKS ids)
    ids._pool.clear()
    ids._refill()
    # When: a job id, a trace id and a message's two ids are drawn
    new_job_id(), new_trace_id()
    render_message(
        _template(), job_id="j", job_type="t", attempt=1, cycle=0, lane="q", priority=4,
        countdown=None, time_limit=None, soft_time_limit=None,
    )  # fmt: skip
    # Then: the four came from it (one OS read for many ids, not one each)
    assert len(ids._pool) == ids._CHUNKS - 4


def test_threads_never_share_an_id() -> None:
    # When: eight threads draw ids at once, across many refills
    with ThreadPoolExecutor(8) as pool:
        drawn = list(pool.map(lambda _: [ids.uuid4_text() for _ in range(2000)], range(8)))
    # Then: no id was handed out twice
    every = [one for batch in drawn for one in batch]
    assert len(set(every)) == len(every)


def test_a_forked_child_draws_ids_its_parent_never_hands_out() -> None:
    # Given: a parent whose pool holds ids it has not handed out yet
    ids._pool.clear()
    ids._refill()
    read, write = os.pipe()
    # When: a child forks and draws ids, and the parent draws its own
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        os.write(write, "\n".join(ids.uuid4_text() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    parent = {ids.uuid4_text() for _ in range(100)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    # Then: the child did not reuse the pool it inherited
    assert len(child) == 100
    assert not parent & child


def _template() -> MessageTemplate:
    return MessageTemplate.build(create_celery(Settings()), RUN_JOB_TASK)
