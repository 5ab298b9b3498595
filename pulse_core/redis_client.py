"""Redis clients, built from a URL and passed in explicitly (no hidden globals)."""

from __future__ import annotations

from redis import Redis


def connect(url: str) -> Redis:
    """A Redis client that decodes replies to ``str`` and fails fast when Redis is gone."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )
