"""What watching queued jobs costs (issue 10): Redis µs per job in the watch's commands.

Every admitted job gets a deadline in the watch zset (``keys.WATCH``): one ``ZADD`` in
the admission script, one ``ZREM`` (or a ``ZADD`` that moves it to the lease) when
an attempt claims it. Both run inside scripts, among other commands on other sorted
sets, so ``INFO commandstats`` of a submit run cannot tell them apart. This section
times them where they run: a Lua loop of ``ZADD`` then ``ZREM`` on a probe zset as
large as the watch set is now (at least 10,000 members), read from commandstats.
The report sets that beside the Redis CPU and the wall time per job of submit and
drain (``report.watch_shares``).
"""

from __future__ import annotations

import time

from bench.common import BenchEnv, Result
from bench.redis_cost import measured
from pulse_core import keys

PROBE = "bench:watch-probe"
PROBE_OPS = 20000
MIN_SIZE = 10000
ZADD = "watch ZADD (admission)"
ZREM = "watch ZREM (claim)"

_FILL = """
for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + i, 'backlog-' .. i) end
"""
_ADD = """
for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + i / 1000, ARGV[3] .. i) end
"""
_REM = """
for i = 1, tonumber(ARGV[1]) do redis.call('ZREM', KEYS[1], ARGV[2] .. i) end
"""


def run(env: BenchEnv) -> list[Result]:
    add = Result("watch", ZADD, unit="µs")
    rem = Result("watch", ZREM, unit="µs")
    size = max(MIN_SIZE, int(env.redis.zcard(keys.WATCH)))
    env.redis.delete(PROBE)
    env.redis.eval(_FILL, 1, PROBE, size, time.time() + 600)
    try:
        for round_no in range(env.rounds):
            prefix = f"0123456789abcdef0123456789-{round_no}-"  # as long as a job id
            with measured(env.redis) as cost:
                env.redis.eval(_ADD, 1, PROBE, PROBE_OPS, time.time() + 60, prefix)
            add.values.append(cost(PROBE_OPS).usec_per_job("zadd"))
            with measured(env.redis) as cost:
                env.redis.eval(_REM, 1, PROBE, PROBE_OPS, prefix)
            rem.values.append(cost(PROBE_OPS).usec_per_job("zrem"))
    finally:
        env.redis.delete(PROBE)
    add.note = f"inside a script, on a zset of {size:,} members"
    rem.note = add.note
    return [add, rem]
