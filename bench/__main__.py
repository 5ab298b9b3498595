"""Run every bench section against one private Redis and print medians, ratios and Redis costs."""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

from bench import batch, delayed, drain, fairness, http, plain_stack, submit, telemetry, watch, wrk
from bench.common import BenchEnv, Result, write_tenants_file
from bench.redis_cost import CLIENT_NAME, reset
from pulse_cli.embedded_redis import EmbeddedRedis

API_KEY = "bench-key"
SECTIONS = {
    "submit": submit,
    "batch": batch,
    "drain": drain,
    "watch": watch,
    "fairness": fairness,
    "delayed": delayed,
    "telemetry": telemetry,
    "http": http,
}
DRAIN_PULSE = "pulse worker, diag.echo"
#: (numerator, denominator, label) pairs printed as ratios.
RATIOS = [
    (submit.PULSE, submit.BARE, "submit: pulse / bare flask (aim >= 1.3)"),
    (submit.MANY, submit.PULSE, "submit: 5,000 tenants / 1 tenant (aim >= 0.95)"),
    (batch.PULSE, batch.PLAIN, "batch: pulse / plain apply_async loop (aim >= 7)"),
    (DRAIN_PULSE, "plain celery task, no result backend", "drain: pulse / plain celery (no results)"),
    (DRAIN_PULSE, "plain celery task, redis result backend", "drain: pulse / plain celery (redis results)"),
    ("submit, telemetry on", "submit, telemetry off", "submit: tracing 100% + metrics / off (aim >= 0.85)"),
    ("drain, telemetry on", "drain, telemetry off", "drain: tracing 100% + metrics / off"),
    ("submit, telemetry on, 10% sampled", "submit, telemetry off", "submit: telemetry on (10% sampled) / off"),
    ("drain, telemetry on, 10% sampled", "drain, telemetry off", "drain: telemetry on (10% sampled) / off"),
    ("B p99 under A's flood", "B p99 idle", "fairness: B p99 flood / idle (aim <= 2)"),
    ("B p99 under A's priority-9 flood", "B p99 idle", "fairness: B p99 priority-9 flood / idle (aim <= 2)"),
    (drain.MANY, drain.ONE_TENANT, f"drain: {drain.MANY_TENANTS:,} tenants / 1 tenant (aim >= 0.9)"),
    (drain.ONE_TENANT_CPU, drain.MANY_CPU, f"drain: worker CPU/job 1 tenant / {drain.MANY_TENANTS:,} (aim >= 0.9)"),
    (
        drain.MANY_NO_METRICS,
        drain.ONE_TENANT_NO_METRICS,
        f"drain: {drain.MANY_TENANTS:,} tenants / 1 tenant, metrics off",
    ),
    (delayed.RSS_WAITING, delayed.RSS_BEFORE, "delayed: worker RSS jobs waiting / none (aim ~1)"),
    (
        f"1 worker (threads x{http.CONCURRENCY}), HTTP 50 ms",
        f"1 worker (threads x{http.CONCURRENCY}), python sleep 50 ms",
        "http: HTTP 50 ms / python sleep 50 ms",
    ),
]


def main(argv: list[str]) -> int:
    wanted = argv or list(SECTIONS)
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not wrk.available():
        print(f"!! wrk not found: HTTP load falls back to a Python client, which caps both sides; {wrk.INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as tmp:
        work = Path(tmp)
        tenants = write_tenants_file(work / "tenants.toml", {"bench": API_KEY})
        redis_server = EmbeddedRedis(work / "redis", persist=False).start()
        try:
            redis = Redis.from_url(redis_server.url, decode_responses=True, client_name=CLIENT_NAME)
            plain_stack.use_broker(redis_server.url)
            env = BenchEnv(redis_server.url, redis, work, tenants, API_KEY)
            results: list[Result] = []
            started_all = time.perf_counter()
            for name in wanted:
                started = time.perf_counter()
                print(f"-- {name} ...", flush=True)
                reset(redis)
                results += SECTIONS[name].run(env)
                print(f"   done in {time.perf_counter() - started:.0f} s", flush=True)
            print(f"-- all sections in {time.perf_counter() - started_all:.0f} s")
        finally:
            redis_server.stop()
    report(results)
    return 0


def _value(v: float, unit: str) -> str:
    return f"{v:.1f}" if unit in ("ms", "µs", "s", "MB") else f"{v:.0f}"


def report(results: list[Result]) -> None:
    by_name = {r.name: r for r in results}
    print(f"\nPulse bench on {platform.node()} ({platform.machine()}), medians of each round")
    print(
        "  (under a row: what one job cost the private Redis, median of the rounds; client cmds from a MONITOR sample)"
    )
    for r in results:
        runs = ", ".join(_value(v, r.unit) for v in r.values)
        print(f"  {r.section:9} {r.name:44} {_value(r.median, r.unit):>8} {r.unit:6} [{runs}]")
        if r.costs:
            c = min(r.costs, key=lambda cost: abs(cost.cpu_us_per_job - r.median_cost(lambda x: x.cpu_us_per_job)))
            line = (
                f"{r.median_cost(lambda x: x.commands_per_job):5.1f} cmds/job,"
                f" {r.median_cost(lambda x: x.scripts_per_job):4.2f} scripts/job,"
                f" Redis CPU {r.median_cost(lambda x: x.cpu_us_per_job):5.1f} µs/job"
            )
            connections = r.median_cost(lambda x: x.connections_per_job)
            if connections > 0.01:
                line += f", {connections:.2f} new connections/job"
            if r.sample:
                line += f"; {r.sample.summary()}"
            print(f"  {'':9}   redis: {line}")
            print(f"  {'':9}   most run: {c.top()}")
        if r.note:
            print(f"  {'':9}   ({r.note})")
    print("Ratios (>1: Pulse is faster; telemetry on/off: 1 is free; fairness: lower is better):")
    ratios = {}
    for top, bottom, label in RATIOS:
        if top in by_name and bottom in by_name:
            ratios[label] = by_name[top].median / by_name[bottom].median
            print(f"  {label:52} {ratios[label]:6.2f}")
    shares = watch_shares(by_name)
    if shares:
        print("Watch of queued jobs (issue 10: at most 10% of submit and of drain):")
        for line in shares:
            print(f"  {line}")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps(
            {
                "ratios": ratios,
                "watch": shares,
                "results": [
                    {
                        "section": r.section,
                        "name": r.name,
                        "unit": r.unit,
                        "values": r.values,
                        "median": r.median,
                        "redis_commands_per_job": [c.commands_per_job for c in r.costs],
                        "redis_scripts_per_job": [c.scripts_per_job for c in r.costs],
                        "redis_cpu_us_per_job": [c.cpu_us_per_job for c in r.costs],
                        "redis_new_connections_per_job": [c.connections_per_job for c in r.costs],
                        "client_commands_per_job": r.sample.client_commands_per_job if r.sample else None,
                    }
                    for r in results
                ],
            },
            indent=2,
        )
    )


def watch_shares(by_name: dict[str, Result]) -> list[str]:
    """The watch's Redis µs per job beside each path's Redis CPU and wall time per job."""
    if watch.ZADD not in by_name or watch.ZREM not in by_name:
        return []
    add, rem = by_name[watch.ZADD].median, by_name[watch.ZREM].median
    lines = [f"ZADD at admission {add:.2f} µs + ZREM at claim {rem:.2f} µs = {add + rem:.2f} µs of Redis per job"]
    for label, name in (("submit", submit.PULSE), ("batch", batch.PULSE), ("drain", DRAIN_PULSE)):
        r = by_name.get(name)
        if r is None or not r.costs:
            continue
        us = add if label != "drain" else rem
        cpu = r.median_cost(lambda c: c.cpu_us_per_job)
        wall = 1e6 / r.median
        if math.isnan(cpu):
            continue
        lines.append(
            f"{label:6}: {us:.2f} µs = {100 * us / cpu:4.1f}% of its Redis CPU ({cpu:.1f} µs/job),"
            f" {100 * us / wall:4.2f}% of its wall time per job ({wall:.0f} µs)"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
