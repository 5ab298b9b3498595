"""HTTP load from wrk (https://github.com/wg/wrk): keep-alive connections, a fixed duration.

The load generator must not be what caps a figure: a Python client spends more CPU
per request than the servers it measures, so both sides would read alike. wrk is
a C program; its Lua scripts here build each request's headers and body. Without
wrk (Debian/Ubuntu: ``apt-get install wrk``; macOS: ``brew install wrk``) the
sections that need it fall back to the Python client and say so in every row.

Written by hand (a few lines of Lua and a regex) because wrk has no Python binding.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install wrk (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
_DONE = "BENCH-WRK "


def available() -> bool:
    """wrk is on PATH (and ``BENCH_NO_WRK=1`` does not ask for the Python client anyway)."""
    return shutil.which("wrk") is not None and os.environ.get("BENCH_NO_WRK") != "1"


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


_DONE_FN = f"""
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
            + summary.errors.write + summary.errors.timeout
  io.write(string.format('{_DONE}{{"requests": %d, "us": %d, "bad": %d, "status": %d, "p50": %d, "p99": %d}}\\n',
    summary.requests, summary.duration, bad, summary.errors.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def fixed_requests_script(path: str, keys: Sequence[str], body: str) -> str:
    """POST ``body`` to ``path``, cycling over the API ``keys`` (one prepared request per key)."""
    key_list = ",".join(_lua_string(k) for k in keys)
    return f"""
local keys = {{{key_list}}}
local body = {_lua_string(body)}
local prepared = {{}}
local n = 0
init = function(args)
  for i, key in ipairs(keys) do
    prepared[i] = wrk.format("POST", {_lua_string(path)},
      {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}}, body)
  end
  -- Each thread starts at its own place in the key list.
  n = math.random(#keys) - 1
end
request = function()
  n = n + 1
  return prepared[(n % #prepared) + 1]
end
{_DONE_FN}"""


def batch_script(path: str, key: str, size: int, payload: str, job_type: str) -> str:
    """POST batches of ``size`` jobs; every other job has an idempotency key never used before."""
    nonce = uuid.uuid4().hex
    return f"""
local counter = 0
local prefix = ""
local plain = '{{"jobType":' .. {_lua_string(json.dumps(job_type))} .. ',"payload":' .. {_lua_string(payload)} .. '}}'
local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. {_lua_string(key)}}}
setups = 0
setup = function(thread)
  setups = setups + 1
  thread:set("thread_no", setups)
end
init = function(args)
  prefix = {_lua_string(nonce)} .. "-" .. tostring(thread_no or 0)
end
request = function()
  counter = counter + 1
  local items = {{}}
  for i = 1, {size} do
    if i % 2 == 0 then
      items[i] = '{{"jobType":' .. {_lua_string(json.dumps(job_type))} .. ',"payload":' .. {_lua_string(payload)}
        .. ',"idempotencyKey":"' .. prefix .. '-' .. counter .. '-' .. i .. '"}}'
    else
      items[i] = plain
    end
  end
  return wrk.format("POST", {_lua_string(path)}, headers, '{{"jobs":[' .. table.concat(items, ",") .. ']}}')
end
{_DONE_FN}"""


def run(
    port: int, script: str, work_dir: Path, *, seconds: float, connections: int, threads: int = 1, name: str = "load"
) -> WrkRun:
    """Run wrk against 127.0.0.1:``port`` with ``script``; raise if any answer was not 2xx/3xx."""
    script_path = work_dir / f"wrk-{name}.lua"
    script_path.write_text(script)
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=30s",
        f"--script={script_path}",
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(re.escape(_DONE) + r"(\{.*\})", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    summary = json.loads(found.group(1))
    if summary["bad"]:
        raise RuntimeError(f"wrk on port {port}: {summary['bad']} of {summary['requests']} requests failed: {summary}")
    return WrkRun(
        requests=summary["requests"],
        seconds=summary["us"] / 1e6,
        p50_ms=summary["p50"] / 1000,
        p99_ms=summary["p99"] / 1000,
    )
