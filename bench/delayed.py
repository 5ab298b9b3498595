"""Delayed jobs: ``JOBS`` jobs due at the same instant, started by two workers.

The jobs are admitted through ``POST /v1/batches`` with one ``options.runAt`` for all,
a few seconds after the last batch will have gone in; two Pulse workers (prefork x2
each, as in the drain section) consume their queue. Until due the jobs wait parked in
Redis (``keys.PARKED_UNTIL``), not in a worker's memory, and the workers' tick puts the
due ones back on their queue in bulk (``pulse_core/guards/lua/release_due.lua``).

Measured: the time from the due instant until the last job started (the job records'
``startedAt``), so the start rate from due; and the resident memory (RSS) of each
worker's main process before the jobs were submitted and while they wait (the largest
of the two workers, the largest sample): it must stay flat in the number of delayed
jobs (issue 11). One round: it is long.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask.testing import FlaskClient
from redis import Redis

from bench.common import BenchEnv, Result, celery_worker, spawn, stop
from bench.drain import CONCURRENCY, PAYLOAD, _wait_worker
from bench.redis_cost import OWN_COMMANDS, measured
from pulse_api import create_app
from pulse_core import keys
from pulse_core.broker.celery_app import create_celery, waiting_lists
from pulse_core.settings import Settings

#: Jobs due at the same instant: issue 11's 50,000 (all started within 60 s by two workers;
#: the section takes about 80 s on the 2-core machine). A smaller ``JOBS`` gets a row note
#: projecting 50,000 at the measured rate, which flattered (20,000 in 14.8 s projected 37 s;
#: 50,000 then took 49.6 s).
ISSUE_JOBS = 50_000
JOBS = ISSUE_JOBS
BATCH = 500
WORKERS = 2
QUEUE = "bench-delayed"
#: The due instant is this long after the last batch is expected in (the admission rate
#: is read from a warm-up batch), so every job is parked before any is due.
MARGIN_SECONDS = 3.0
RSS_EVERY = 0.25
STARTED = f"{JOBS:,} due at once: last start after due"
RATE = f"{JOBS:,} due at once: starts/s from due"
RSS_BEFORE = "worker RSS, nothing delayed"
RSS_WAITING = f"worker RSS, {JOBS:,} delayed jobs waiting"


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (``/proc/PID/status`` ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _waiting(redis: Redis) -> tuple[int, int, int]:
    """(parked jobs, jobs waiting on the queue: messages on its lists plus tenants whose
    released jobs wait in their ready sets for its dispatch, messages reserved by a worker)."""
    lists = waiting_lists(QUEUE)
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.PARKED_UNTIL)
        pipe.zcard(keys.active(QUEUE))
        for name in lists:
            pipe.llen(name)
        pipe.hlen("unacked")
        counts = pipe.execute()
    OWN_COMMANDS.update({"zcard": 2, "llen": len(lists), "hlen": 1})
    return int(counts[0]), sum(int(c) for c in counts[1:-1]), int(counts[-1])


def _started_at(redis: Redis, ids: list[str]) -> tuple[list[float], int]:
    """Each job's ``startedAt`` (epoch seconds), and how many jobs the recovery sweep
    republished (``recoveries``); raises if one has not started."""
    found: list[float] = []
    republished = 0
    for start in range(0, len(ids), 5000):
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 5000]:
                pipe.hmget(keys.job(job_id), ["startedAt", "recoveries"])
            values = pipe.execute()
        missing = sum(1 for started, _ in values if not started)
        if missing:
            raise RuntimeError(f"{missing} delayed jobs have not started")
        found += [_at(started) for started, _ in values]
        republished += sum(1 for _, recoveries in values if recoveries and int(recoveries) > 0)
    return found, republished


def run(env: BenchEnv) -> list[Result]:
    settings = Settings(
        redis_url=env.redis_url, broker_url=env.redis_url, tenants_file=env.tenants_file, default_queue=QUEUE
    )
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {env.api_key}"}
    results = {name: Result("delayed", name, unit="MB") for name in (RSS_BEFORE, RSS_WAITING)}
    results[STARTED] = Result("delayed", STARTED, unit="s")
    results[RATE] = Result("delayed", RATE)
    names = [f"delayed{n}@bench" for n in range(WORKERS)]
    workers = [
        spawn(
            celery_worker("pulse_worker.app", QUEUE, CONCURRENCY, "-n", name),
            env.env(PULSE_DEFAULT_QUEUE=QUEUE),
            env.work_dir / f"delayed-worker-{n}.log",
        )
        for n, name in enumerate(names)
    ]
    try:
        app = create_celery(settings)
        for name in names:
            _wait_worker(app, name)
        # Warm up, and time the admission: a batch of jobs to run at once, then (timed, with
        # nothing running) a batch of jobs delayed by a few seconds.
        for delay in (None, 5.0):
            started = time.monotonic()
            _submit(client, headers, BATCH, None if delay is None else datetime.now(UTC) + timedelta(seconds=delay))
            per_job = (time.monotonic() - started) / BATCH
            deadline = time.monotonic() + 120
            while any(_waiting(env.redis)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm-up jobs did not run")
                time.sleep(0.1)
        time.sleep(2)
        pids = [w.pid for w in workers]
        before = []
        for _ in range(4):
            before.append(max(rss_mb(pid) for pid in pids))
            time.sleep(RSS_EVERY)
        results[RSS_BEFORE].values.append(max(before))

        # Every job due at one instant, after the last batch is expected in (at 1.3x the warm-up's time per job).
        due = datetime.now(UTC) + timedelta(seconds=MARGIN_SECONDS + 1.3 * JOBS * per_job)
        ids = _submit(client, headers, JOBS, due)
        loaded = time.time()
        if loaded > due.timestamp():
            raise RuntimeError(f"admitting {JOBS:,} jobs took past their due time ({loaded - due.timestamp():.1f} s)")
        parked, listed, reserved = _waiting(env.redis)
        print(
            f"   {len(ids):,} jobs admitted, due in {due.timestamp() - loaded:.1f} s: {parked:,} parked,"
            f" {listed} on the queue, {reserved} reserved by a worker",
            flush=True,
        )
        waiting = [max(rss_mb(pid) for pid in pids)]
        while time.time() < due.timestamp() - RSS_EVERY:
            waiting.append(max(rss_mb(pid) for pid in pids))
            time.sleep(RSS_EVERY)
        results[RSS_WAITING].values.append(max(waiting))

        released_at = None
        running_rss: list[float] = []
        with measured(env.redis) as cost:
            deadline = time.time() + 600
            while True:
                parked, listed, reserved = _waiting(env.redis)
                if parked == 0 and released_at is None and time.time() >= due.timestamp():
                    released_at = time.time()
                if parked == listed == reserved == 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"delayed jobs not done: {parked} parked, {listed} queued, {reserved} reserved")
                running_rss.append(max(rss_mb(pid) for pid in pids))
                time.sleep(0.05)
        starts, republished = _started_at(env.redis, ids)
        last = max(starts) - due.timestamp()
        results[STARTED].values.append(last)
        results[STARTED].costs.append(cost(len(ids)))
        results[RATE].values.append(len(ids) / last)
        release = f"all released from parking {released_at - due.timestamp():.1f} s after due" if released_at else ""
        results[STARTED].note = (
            f"first started {min(starts) - due.timestamp():.1f} s after due; {release};"
            f" {republished:,} republished by the recovery sweep; two workers, prefork x{CONCURRENCY} each"
        )
        if JOBS != ISSUE_JOBS:
            results[RATE].note = f"{ISSUE_JOBS:,} at this rate: {ISSUE_JOBS * last / len(ids):.0f} s (aim: 60 s)"
        results[RSS_WAITING].note = f"while they ran: up to {max(running_rss, default=0):.0f} MB"
    finally:
        for worker in workers:
            stop(worker)
    return list(results.values())


def _body(run_at: datetime | None) -> dict[str, object]:
    body: dict[str, object] = {"jobType": "diag.echo", "payload": PAYLOAD}
    if run_at is not None:
        body["options"] = {"runAt": _iso(run_at)}
    return body


def _submit(client: FlaskClient, headers: dict[str, str], n: int, due: datetime | None) -> list[str]:
    """Admit ``n`` jobs by batches, due at ``due`` (``None``: at once); their ids."""
    ids: list[str] = []
    body = _body(due)
    while len(ids) < n:
        size = min(BATCH, n - len(ids))
        answer = client.post("/v1/batches", json={"jobs": [body] * size}, headers=headers)
        took = [item["job"]["jobId"] for item in (answer.get_json() or {}).get("items", []) if "job" in item]
        if answer.status_code != 200 or len(took) != size:
            raise RuntimeError(f"batch not admitted: {answer.status_code} {answer.get_data()[:300]!r}")
        ids += took
    return ids
