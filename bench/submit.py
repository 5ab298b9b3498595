"""Jobs/s through ``POST /v1/jobs`` beside a bare Flask + ``apply_async`` endpoint, from wrk.

Three servers run side by side and take turns, round by round (wrk, keep-alive
connections, a fixed duration each): Pulse with the one bench tenant, the bare
endpoint (same server, worker class and worker count as ``pulse api``:
``bench.servers``) publishing to the same private Redis, and Pulse with a tenants
file of 5,000 tenants whose keys the load cycles through (the submit cost must not
grow with the number of tenants). Each row also says what a job cost Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench import wrk
from bench.common import BenchEnv, Result, http_load, spawn, stop, wait_http, write_tenants_file
from bench.redis_cost import Cost, client_commands, jobs_enqueued, measured, settle
from bench.servers import bare_api, pulse_api
from pulse_cli.embedded_redis import free_port
from pulse_core.store.job_types import announce

SECONDS = 5
WARM_UP_SECONDS = 1
CONNECTIONS = 16
MANY_TENANTS = 5000
SAMPLE_JOBS = 100
BODY = json.dumps({"jobType": "diag.echo", "payload": {"n": 1, "text": "hello"}})
PULSE = "pulse POST /v1/jobs"
BARE = "flask + apply_async"
MANY = f"pulse POST /v1/jobs, {MANY_TENANTS:,} tenants"


def many_tenants_file(work_dir: Path, n: int = MANY_TENANTS) -> tuple[Path, list[str]]:
    """A tenants file of ``n`` tenants (the bench's defaults), and their API keys."""
    keys = [f"bench-key-{i:05d}" for i in range(n)]
    path = write_tenants_file(work_dir / f"tenants-{n}.toml", {f"t{i:05d}": k for i, k in enumerate(keys)})
    return path, keys


class Target:
    """One server under load: how to start it, where to POST, with which keys."""

    def __init__(self, result: Result, command: list[str], env: dict[str, str], path: str, keys: list[str]) -> None:
        self.result, self.command, self.env, self.path, self.keys = result, command, env, path, keys
        self.port = int(command[command.index("--bind") + 1].rsplit(":", 1)[1])

    def load(self, env: BenchEnv, seconds: float, name: str) -> tuple[float, int]:
        """Put the load on for ``seconds``; return (requests/s, requests)."""
        if wrk.available():
            script = wrk.fixed_requests_script(self.path, self.keys, BODY)
            done = wrk.run(self.port, script, env.work_dir, seconds=seconds, connections=CONNECTIONS, name=name)
            return done.rate, done.requests
        n = max(200, int(seconds * 300))
        rate = http_load(self.port, self.path, lambda i: BODY.encode(), self._headers(0), requests=n, concurrency=8)
        return rate, n

    def _headers(self, i: int) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.keys[i % len(self.keys)]}"}

    def sample(self, env: BenchEnv) -> int:
        """A few requests from Python, for the MONITOR sample (never timed)."""
        http_load(
            self.port,
            self.path,
            lambda i: BODY.encode(),
            self._headers(0),
            requests=SAMPLE_JOBS,
            concurrency=2,
        )
        return SAMPLE_JOBS


def measure_load(env: BenchEnv, load: Callable[[], float]) -> tuple[float, Cost]:
    """Run ``load`` (it returns its rate), let the servers finish what is still in flight,
    and read what the jobs cost Redis; the jobs are counted on Redis (``jobs_enqueued``),
    not from the client."""
    jobs_before = jobs_enqueued(env.redis)
    with measured(env.redis) as cost:
        rate = load()
        settle(env.redis)
    return rate, cost(jobs_enqueued(env.redis) - jobs_before)


def measure_rounds(env: BenchEnv, targets: list[Target], seconds: float = SECONDS) -> None:
    """Start every target, warm each up, then ``env.rounds`` interleaved rounds; each round's
    rate and Redis cost go to its result; a MONITOR sample of each at the end."""
    processes = [spawn(t.command, t.env, env.work_dir / f"{t.result.section}-{n}.log") for n, t in enumerate(targets)]
    try:
        for target in targets:
            wait_http(target.port, "/healthz" if target.path.startswith("/v1") else "/", timeout=60)
            target.load(env, WARM_UP_SECONDS, "warm-up")
        for _ in range(env.rounds):
            for target in targets:
                rate, cost = measure_load(env, lambda t=target: t.load(env, seconds, "round")[0])
                target.result.values.append(rate)
                target.result.costs.append(cost)
        for target in targets:
            target.result.sample = client_commands(env.redis, lambda t=target: t.sample(env))
            if not wrk.available():
                target.result.note = f"python client ({wrk.INSTALL_HINT}): it caps both sides"
    finally:
        for process in processes:
            stop(process)


def check_plain(result: Result) -> None:
    """A plain row's Redis work must be its own, on the bench's Redis: at least one command
    per job (else it published elsewhere) and no script (else Pulse's work leaked into it)."""
    if result.costs and min(c.commands_per_job for c in result.costs) < 1:
        raise RuntimeError(f"{result.name}: under one Redis command per job on the bench Redis: it published elsewhere")
    leaked = max((c.scripts_per_job for c in result.costs), default=0)
    if leaked > 0.01:
        result.note = f"!! {leaked:.2f} scripts/job: Pulse requests still in flight were counted here"


def run(env: BenchEnv) -> list[Result]:
    announce(env.redis, ["diag.echo"], 3600)  # the API accepts diag.echo with no worker running
    many_file, many_keys = many_tenants_file(env.work_dir)
    targets = [
        Target(Result("submit", PULSE), pulse_api(free_port()), env.env(), "/v1/jobs", [env.api_key]),
        Target(Result("submit", BARE), bare_api(free_port()), env.env(), "/jobs", [env.api_key]),
        Target(
            Result("submit", MANY),
            pulse_api(free_port()),
            env.env(PULSE_TENANTS_FILE=str(many_file)),
            "/v1/jobs",
            many_keys,
        ),
    ]
    measure_rounds(env, targets)
    check_plain(targets[1].result)
    return [t.result for t in targets]
