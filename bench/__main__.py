"""Run every bench section against one private Redis and print medians and ratios."""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import batch, drain, fairness, http, submit, telemetry
from bench.common import BenchEnv, Result
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.redis_client import connect
from pulse_core.tenants import hash_api_key

API_KEY = "bench-key"
SECTIONS = {
    "submit": submit,
    "batch": batch,
    "drain": drain,
    "fairness": fairness,
    "telemetry": telemetry,
    "http": http,
}
#: (numerator, denominator, label) pairs printed as ratios.
RATIOS = [
    ("pulse POST /v1/jobs", "flask + apply_async", "submit: pulse / bare flask"),
    (f"pulse POST /v1/batches x{batch.BATCH}", "plain loop of apply_async", "batch: pulse / plain apply_async loop"),
    ("pulse worker, diag.echo", "plain celery task, no result backend", "drain: pulse / plain celery (no results)"),
    (
        "pulse worker, diag.echo",
        "plain celery task, redis result backend",
        "drain: pulse / plain celery (redis results)",
    ),
    ("submit, telemetry on", "submit, telemetry off", "submit: telemetry on / off"),
    ("drain, telemetry on", "drain, telemetry off", "drain: telemetry on / off"),
    ("submit, telemetry on, 10% sampled", "submit, telemetry off", "submit: telemetry on (10% sampled) / off"),
    ("drain, telemetry on, 10% sampled", "drain, telemetry off", "drain: telemetry on (10% sampled) / off"),
    ("B p99 under A's flood", "B p99 idle", "fairness: B p99 flood / idle (aim <= 2)"),
    (
        f"1 worker (threads x{http.CONCURRENCY}), HTTP 50 ms",
        f"1 worker (threads x{http.CONCURRENCY}), python sleep 50 ms",
        "http: HTTP 50 ms / python sleep 50 ms",
    ),
]


def main(argv: list[str]) -> int:
    wanted = argv or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as tmp:
        work = Path(tmp)
        tenants = work / "tenants.toml"
        tenants.write_text(
            '[defaults]\nrate_limit = "1000000/second"\nmax_pending = 100000000\n'
            f'[tenants.bench]\napi_key_sha256 = ["{hash_api_key(API_KEY)}"]\n'
        )
        redis_server = EmbeddedRedis(work / "redis", persist=False).start()
        try:
            env = BenchEnv(redis_server.url, connect(redis_server.url), work, tenants, API_KEY)
            results: list[Result] = []
            for name in wanted:
                started = time.perf_counter()
                print(f"-- {name} ...", flush=True)
                results += SECTIONS[name].run(env)
                print(f"   done in {time.perf_counter() - started:.0f} s", flush=True)
        finally:
            redis_server.stop()
    report(results)
    return 0


def report(results: list[Result]) -> None:
    by_name = {r.name: r for r in results}
    print(f"\nPulse bench on {platform.node()} ({platform.machine()}), medians of each round")
    for r in results:
        runs = ", ".join(f"{v:.1f}" if r.unit == "ms" else f"{v:.0f}" for v in r.values)
        print(f"  {r.section:8} {r.name:42} {r.median:9.1f} {r.unit}   [{runs}]")
    print("Ratios (>1: Pulse is faster; telemetry on/off: 1 is free; fairness: lower is better):")
    ratios = {}
    for top, bottom, label in RATIOS:
        if top in by_name and bottom in by_name:
            ratios[label] = by_name[top].median / by_name[bottom].median
            print(f"  {label:48} {ratios[label]:6.2f}")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps(
            {
                "ratios": ratios,
                "results": [
                    {
                        "section": r.section,
                        "name": r.name,
                        "unit": r.unit,
                        "values": r.values,
                        "median": r.median,
                    }
                    for r in results
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
