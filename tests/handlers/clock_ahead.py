"""Loaded as a handler module (it registers no handler), it runs the worker's clock
(``time.time``) an hour ahead of the host's and of Redis': a host whose clock is wrong."""

from __future__ import annotations

import time

AHEAD_SECONDS = 3600.0

_real = time.time


def _ahead() -> float:
    return _real() + AHEAD_SECONDS


time.time = _ahead
