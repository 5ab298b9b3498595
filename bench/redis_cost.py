"""What a measured phase cost the bench's private Redis, per job.

Read from ``INFO commandstats``, ``INFO stats`` and ``INFO cpu`` just before and just
after the phase (the bench's own ``INFO`` calls are left out):

- **commands/job**: every command Redis ran, those run inside Lua scripts included
  (an ``EVALSHA`` itself is counted under scripts/job, not here);
- **scripts/job**: ``EVAL``/``EVALSHA``/``FCALL`` calls;
- **client cmds/job**: commands that came from a client (each a request; pipelined
  ones share a round trip, so this is an upper bound on round trips): the
  difference between ``total_commands_processed`` and the commands run inside
  scripts, which is only known from a ``MONITOR`` sample (``client_commands``), so
  it is measured on a short separate run, never on a timed one;
- **new connections/job**: printed when above 0.01 (a client connecting per request);
- **Redis CPU µs/job**: the server's main-thread CPU time (``used_cpu_*_main_thread``),
  which includes reading and writing the sockets, not only running commands.

Everything on the Redis is counted, idle workers' polling included: that is a
real cost of the stack, and it is small beside a measured phase's jobs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from pulse_core import keys

#: The plain stack's queue (``bench.plain_stack``'s ``task_default_queue``).
PLAIN_QUEUE = "plain"

#: Commands the bench itself sends during a measured phase (drain polls the queue): left out.
OWN_COMMANDS: Counter[str] = Counter()
#: The bench's own connections carry this name, so a MONITOR sample can leave them out.
CLIENT_NAME = "bench"
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
_OWN = frozenset({"info", "monitor"})


@dataclass
class Snapshot:
    calls: Counter[str]
    usec: Counter[str]
    cpu_seconds: float
    own: Counter[str]
    connections: int

    @classmethod
    def take(cls, redis: Redis) -> Snapshot:
        stats: dict[str, Any] = redis.info("commandstats")
        cpu: dict[str, Any] = redis.info("cpu")
        connections = int(redis.info("stats")["total_connections_received"])
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_").lower()
            calls[command] = int(value["calls"])
            usec[command] = int(value["usec"])
        main = float(cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"]))
        main += float(cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"]))
        return cls(calls, usec, main, Counter(OWN_COMMANDS), connections)


@dataclass
class Cost:
    """One phase's Redis work divided by the jobs it handled."""

    jobs: int
    calls: Counter[str] = field(default_factory=Counter)
    usec: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0
    connections: int = 0

    @property
    def commands_per_job(self) -> float:
        n = sum(c for name, c in self.calls.items() if name not in SCRIPT_COMMANDS)
        return n / self.jobs

    @property
    def scripts_per_job(self) -> float:
        return sum(self.calls[name] for name in SCRIPT_COMMANDS) / self.jobs

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu_seconds * 1e6 / self.jobs

    def usec_per_job(self, command: str) -> float:
        """Redis µs per job inside ``command`` (inside scripts included)."""
        return self.usec[command] / self.jobs

    def top(self, n: int = 6) -> str:
        per_job = sorted(
            ((c / self.jobs, name) for name, c in self.calls.items() if name not in SCRIPT_COMMANDS), reverse=True
        )
        return " ".join(f"{name.upper()} {v:.1f}" for v, name in per_job[:n] if v >= 0.05)

    @property
    def connections_per_job(self) -> float:
        """New connections Redis accepted per job (a client that connects per request shows here)."""
        return self.connections / self.jobs


def between(before: Snapshot, after: Snapshot, jobs: int) -> Cost:
    own = after.own - before.own
    calls = Counter({k: after.calls[k] - before.calls[k] - own[k] for k in after.calls if k not in _OWN})
    usec = Counter({k: after.usec[k] - before.usec[k] for k in after.usec if k not in _OWN})
    return Cost(
        max(jobs, 1), +calls, +usec, after.cpu_seconds - before.cpu_seconds, after.connections - before.connections
    )


@contextmanager
def measured(redis: Redis) -> Iterator[Callable[[int], Cost]]:
    """``with measured(redis) as cost: ...; c = cost(jobs)``: the phase's cost per job."""
    before = Snapshot.take(redis)
    after: list[Snapshot] = []
    yield lambda jobs: between(before, after[0], jobs)
    after.append(Snapshot.take(redis))


def settle(redis: Redis, *, quiet_commands: int = 100, interval: float = 0.25, quiet_for: int = 4) -> None:
    """Wait until the servers have finished what was sent to them (requests still in
    flight when the load generator stopped): Redis runs under ``quiet_commands`` commands
    per ``interval`` for ``quiet_for`` intervals in a row (a batch being validated sends
    nothing for a while). Idle workers' polling stays under that."""
    deadline = time.monotonic() + 60
    last = int(redis.info("stats")["total_commands_processed"])
    quiet = 0
    while quiet < quiet_for and time.monotonic() < deadline:
        time.sleep(interval)
        now = int(redis.info("stats")["total_commands_processed"])
        quiet = quiet + 1 if now - last < quiet_commands else 0
        last = now


def reset(redis: Redis) -> None:
    """Start a section on an empty store: remove Pulse's keys (records, backlog, the watch
    set: an earlier section's jobs left queued would fall due and keep the sweep busy)
    and every queue's messages; kombu's bindings stay."""
    doomed: list[str] = []
    for key in redis.scan_iter(count=1000):
        if key.startswith(f"{keys.PREFIX}:") or redis.type(key) == "list":
            doomed.append(key)
    for start in range(0, len(doomed), 1000):
        redis.unlink(*doomed[start : start + 1000])


def jobs_enqueued(redis: Redis) -> int:
    """Jobs waiting so far: Pulse's backlog (every tenant's ``pending``) plus the plain
    stack's queue. Read before and after a submit phase, with no worker consuming."""
    return pending_jobs(redis) + int(redis.llen(PLAIN_QUEUE))  # type: ignore[arg-type]


def pending_jobs(redis: Redis) -> int:
    """Every tenant's ``pending`` (its ``keys.tenant_counts``), summed."""
    counts = list(redis.scan_iter(match=keys.tenant_counts("*"), count=1000))
    with redis.pipeline(transaction=False) as pipe:
        for key in counts:
            pipe.hget(key, "pending")
        return sum(int(v or 0) for v in pipe.execute())


@dataclass
class ClientSample:
    """Commands per job seen by ``MONITOR`` during an untimed sample, by where they came from."""

    jobs: int
    from_clients: Counter[str]
    in_scripts: Counter[str]

    @property
    def client_commands_per_job(self) -> float:
        return sum(self.from_clients.values()) / self.jobs

    def summary(self) -> str:
        top = " ".join(
            f"{name} {c / self.jobs:.1f}" for name, c in self.from_clients.most_common(4) if c / self.jobs >= 0.05
        )
        return f"{self.client_commands_per_job:4.1f} client cmds/job ({top})"


_END = "bench-monitor-end"


def client_commands(redis: Redis, action: Callable[[], int]) -> ClientSample:
    """Run ``action`` (it returns how many jobs it handled) under ``MONITOR``; count commands
    by origin: a client (``tcp``/``unix``) or a Lua script (``lua``). The bench's own
    connections (named ``CLIENT_NAME``) are left out."""
    entries: list[tuple[str, str, str]] = []
    ready = threading.Event()
    failures: list[BaseException] = []

    def listen() -> None:
        try:
            with redis.monitor() as monitor:
                ready.set()
                for entry in monitor.listen():
                    command = str(entry.get("command", ""))
                    if _END in command:
                        return
                    where = f"{entry.get('client_address')}:{entry.get('client_port')}"
                    entries.append((str(entry.get("client_type")), where, command.split(" ", 1)[0].upper()))
        except BaseException as error:  # reported by the caller
            failures.append(error)
            ready.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    own = _own_addresses(redis)
    jobs = action()
    own |= _own_addresses(redis)
    redis.echo(_END)
    thread.join(60)
    if failures:
        raise failures[0]
    from_clients: Counter[str] = Counter()
    in_scripts: Counter[str] = Counter()
    for origin, where, name in entries:
        if origin == "lua":
            in_scripts[name] += 1
        elif where not in own:
            from_clients[name] += 1
    return ClientSample(max(jobs, 1), from_clients, in_scripts)


def _own_addresses(redis: Redis) -> set[str]:
    return {str(c["addr"]) for c in redis.client_list() if c.get("name") == CLIENT_NAME}
