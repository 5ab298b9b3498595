"""The ``pulse`` command: run the API, a worker, Flower, or the whole dev stack.

Each subcommand starts its process by module path (gunicorn ``pulse_api.wsgi:app``,
``celery -A pulse_worker.app``), so this module imports neither plane.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

import click

from pulse_cli.embedded_redis import EmbeddedRedis, free_port
from pulse_core.broker.celery_app import WORKER_ENV
from pulse_core.broker.routing import tenant_queues
from pulse_core.errors import ConfigError
from pulse_core.redis_client import connect
from pulse_core.settings import DEV_ENV_FILE, Settings
from pulse_core.store.job_types import live_job_types
from pulse_core.telemetry.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from pulse_core.tenants import TenantsConfig

CELERY_APP = "pulse_worker.app"
FLOWER_APP = "pulse_cli.flower_app"
WSGI_APP = "pulse_api.wsgi:app"
DIAGNOSTICS_MODULE = "pulse_worker.diagnostics"
DEV_TENANTS_FILE = Path("deploy/tenants.dev.toml")
DEV_DEMO_KEY = "pulse-demo-key"
DEV_STATE_DIR = Path(".pulse")
DEV_WORKER_METRICS_PORT = 9808
#: The embedded Redis's port: PULSE_REDIS_URL's default, so other commands find it.
DEV_REDIS_PORT = 6379
DEFAULT_API_METRICS_PORT = 9807
#: Settings read by pulse_api.gunicorn_conf (declared in pulse_core.settings).
API_METRICS_PORT_ENV = "PULSE_API_METRICS_PORT"
API_METRICS_HOST_ENV = "PULSE_API_METRICS_HOST"
DEV_RECEIVER_PORT = 8010
STOP_GRACE_SECONDS = 15.0
GUNICORN_CONFIG = "python:pulse_api.gunicorn_conf"


def _check_settings(env: Mapping[str, str], *, need_tenants: bool) -> Settings:
    try:
        settings = Settings.from_process_env(env)
        if need_tenants:
            TenantsConfig.load(settings.require_tenants_file())
    except ConfigError as exc:
        raise click.ClickException(f"bad setting: {exc}") from None
    return settings


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def _pulse(*args: str) -> list[str]:
    return [sys.executable, "-m", "pulse_cli.cli", *args]


def use_metrics_dir(env: dict[str, str], chosen: str | None, role: str) -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an emptied folder for this process tree.

    ``chosen`` (``--metrics-dir``) wins, then the variable as already set, then a
    folder of this process's own under the system's temporary folder.
    """
    folder = chosen or env.get(MULTIPROC_ENV)
    path = Path(folder) if folder else Path(tempfile.gettempdir(), "pulse-metrics", f"{role}-{os.getpid()}")
    prepare_multiprocess_dir(path)
    env[MULTIPROC_ENV] = str(path)
    return path


def flower_env(env: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """Flower's environment: basic auth from ``PULSE_FLOWER_BASIC_AUTH``, no Pulse metrics dir."""
    out = {k: v for k, v in env.items() if k != MULTIPROC_ENV}  # Flower keeps its own metrics
    if settings.flower_basic_auth:
        out["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth  # read by Flower; kept out of the process list
    return out


def api_command(host: str, port: int, workers: int) -> list[str]:
    # pulse_api.serve is gunicorn's own entry point, run after gevent patches the stdlib.
    return [
        sys.executable,
        "-m",
        "pulse_api.serve",
        "--config",
        GUNICORN_CONFIG,
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        # Loaded once in the master: SIGHUP then starts workers from the config in
        # force, which re-read the tenants file and keep that config if it is bad.
        "--preload",
        WSGI_APP,
    ]


def worker_command(
    queues: str | None,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    events: bool,
    hostname: str | None = None,
) -> list[str]:
    # --quiet: no banner on stdout, so every line the worker writes is a log record.
    args = ["--quiet", "worker", "--pool", pool, "--loglevel", loglevel, "--without-gossip"]
    if hostname:
        args += ["--hostname", hostname]
    if queues:
        args += ["--queues", queues]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    if events:
        args.append("--task-events")
    return _celery(*args)


def flower_command(address: str, port: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", FLOWER_APP, "flower", f"--address={address}", f"--port={port}"]


@click.group()
def main() -> None:
    """Pulse: a multi-tenant job platform on Celery, Redis and Flask."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--metrics-dir", help="folder for per-process metric files (emptied at start)")
@click.option(
    "--metrics-port",
    default=DEFAULT_API_METRICS_PORT,
    show_default=True,
    type=int,
    help="Prometheus endpoint, apart from the public port (0: none)",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="address of the metrics endpoint")
def api(host: str, port: int, workers: int, metrics_dir: str | None, metrics_port: int, metrics_host: str) -> None:
    """Serve the HTTP API with gunicorn (metrics on a port of their own)."""
    _check_settings(os.environ, need_tenants=True)
    env = dict(os.environ)
    use_metrics_dir(env, metrics_dir, "api")
    env.pop(API_METRICS_PORT_ENV, None)
    if metrics_port:
        env[API_METRICS_PORT_ENV] = str(metrics_port)
        env[API_METRICS_HOST_ENV] = metrics_host
    _exec(api_command(host, port, workers), env)


def tenant_worker_queues(config: TenantsConfig, tenants: str, fallback_queue: str) -> list[str]:
    """The queues a ``--tenants a,b`` worker consumes: every queue each tenant's own settings
    name (``pulse_core.broker.routing.tenant_queues``): its queue, else the shared one (whose
    jobs of every tenant it then runs, in fair order), and its tenant x jobType queues."""
    found: list[str] = []
    for tenant_id in (t.strip() for t in tenants.split(",") if t.strip()):
        if tenant_id not in config.tenants:
            raise click.ClickException(f"--tenants: no tenant {tenant_id!r} in the tenants file")
        found += tenant_queues(config, tenant_id, fallback_queue)
    return list(dict.fromkeys(found))


@main.command()
@click.option(
    "--queues",
    help="comma-separated queues to consume (default: the shared queue)",
)
@click.option(
    "--tenants",
    help="comma-separated tenants: consume the queues their own settings name (their queue, else the shared one)",
)
@click.option(
    "--concurrency", type=int, help="processes (prefork) or threads (--pool threads) in the pool (default: CPU count)"
)
@click.option(
    "--hostname",
    help="the worker's Celery node name, unique per worker (e.g. w1@%h); default pulse-<pid>-<random>@<host>",
)
@click.option("--pool", default="prefork", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--events/--no-events", default=True, show_default=True, help="send task events (for Flower)")
@click.option("--metrics-dir", help="folder for per-process metric files (emptied at start)")
def worker(
    queues: str | None,
    tenants: str | None,
    concurrency: int | None,
    hostname: str | None,
    pool: str,
    loglevel: str,
    events: bool,
    metrics_dir: str | None,
) -> None:
    """Run a Celery worker with Pulse's settings (SIGTERM: soft shutdown, then requeue)."""
    settings = _check_settings(os.environ, need_tenants=bool(tenants))
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    if tenants:
        config = TenantsConfig.load(settings.require_tenants_file())
        names += tenant_worker_queues(config, tenants, settings.default_queue)
    env = dict(os.environ)
    env.update(WORKER_ENV)
    use_metrics_dir(env, metrics_dir, "worker")
    command = worker_command(",".join(dict.fromkeys(names)) or None, concurrency, pool, loglevel, events, hostname)
    _exec(command, env)


@main.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
def flower(address: str, port: int) -> None:
    """Run the Flower dashboard against the broker (basic auth from PULSE_FLOWER_BASIC_AUTH)."""
    settings = _check_settings(os.environ, need_tenants=False)
    _exec(flower_command(address, port), flower_env(os.environ, settings))


@main.command("demo-receiver", hidden=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEV_RECEIVER_PORT, show_default=True, type=int)
def demo_receiver(host: str, port: int) -> None:
    """The dev stack's HTTP handler endpoint (checks signatures, echoes the payload)."""
    from pulse_cli.demo_receiver import serve

    serve(host, port)


def dev_secret_key(env: dict[str, str]) -> None:
    """Give the dev stack a ``PULSE_SECRET_KEY`` (kept in .pulse/secret-key) and let it
    reach loopback over plain http, for the demo receiver."""
    from pulse_core.http_handlers.config import ALLOW_ENV, DEV_ALLOW, SECRET_KEY_ENV

    env.setdefault(ALLOW_ENV, DEV_ALLOW)
    if env.get(SECRET_KEY_ENV):
        return
    path = DEV_STATE_DIR / "secret-key"
    if not path.exists():
        from cryptography.fernet import Fernet

        DEV_STATE_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    env[SECRET_KEY_ENV] = path.read_text().strip()


@main.command()
@click.option("--api-port", default=8000, show_default=True, type=int)
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--receiver-port", default=DEV_RECEIVER_PORT, show_default=True, type=int)
@click.option(
    "--worker-metrics-port",
    default=DEV_WORKER_METRICS_PORT,
    show_default=True,
    type=int,
    help="the worker's Prometheus endpoint (0: none)",
)
@click.option(
    "--api-metrics-port",
    default=DEFAULT_API_METRICS_PORT,
    show_default=True,
    type=int,
    help="the API's Prometheus endpoint (0: none)",
)
@click.option(
    "--redis-port",
    default=None,
    type=int,
    help="port of the embedded Redis (default: 6379, PULSE_REDIS_URL's default, or a free one when it is taken)",
)
def dev(
    api_port: int,
    flower_port: int,
    concurrency: int,
    receiver_port: int,
    worker_metrics_port: int,
    api_metrics_port: int,
    redis_port: int | None,
) -> None:
    """Run the whole stack in the foreground: Redis (embedded if needed), API, worker, Flower.

    The embedded Redis listens on PULSE_REDIS_URL's default port (6379) or, when that is
    taken (a Redis of the machine's own, say), on a free port. Either way the stack's URLs
    are written to .pulse/env, where `pulse` and `celery` commands started in this folder
    find them, so they reach the stack from a second terminal as they are.
    """
    env = dict(os.environ)
    env.setdefault("PULSE_TENANTS_FILE", str(DEV_TENANTS_FILE))
    if not Path(env["PULSE_TENANTS_FILE"]).is_file():
        raise click.ClickException(
            f"no tenants file at {env['PULSE_TENANTS_FILE']}: run pulse dev from the repository root "
            "(where deploy/ is), or set PULSE_TENANTS_FILE"
        )
    modules = [m for m in env.get("PULSE_HANDLER_MODULES", "").split(",") if m.strip()]
    env["PULSE_HANDLER_MODULES"] = ",".join([*modules, DIAGNOSTICS_MODULE])
    # Flower's HTTP API answers without a login on the loopback-only dev stack.
    env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    env.update(WORKER_ENV)
    dev_secret_key(env)
    if worker_metrics_port:
        env["PULSE_WORKER_METRICS_PORT"] = str(worker_metrics_port)
    embed = not env.get("PULSE_REDIS_URL")
    if embed and redis_port is None:
        redis_port = DEV_REDIS_PORT if port_is_free(DEV_REDIS_PORT) else free_port()
    ports = {"API (--api-port)": api_port, "Flower (--flower-port)": flower_port}
    ports |= {"worker metrics (--worker-metrics-port)": worker_metrics_port}
    ports |= {"API metrics (--api-metrics-port)": api_metrics_port}
    ports |= {"demo receiver (--receiver-port)": receiver_port}
    if embed and redis_port is not None:
        ports["embedded Redis (--redis-port, or set PULSE_REDIS_URL to use a running Redis)"] = redis_port
    for what, port in ports.items():
        if port and not port_is_free(port):
            raise click.ClickException(f"port {port} is in use: stop what holds it, or choose another {what}")
    if embed:
        assert redis_port is not None
        env["PULSE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    settings = _check_settings(env, need_tenants=True)
    redis: EmbeddedRedis | None = None
    if embed:
        try:
            redis = EmbeddedRedis(DEV_STATE_DIR / "redis", port=redis_port).start()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    code = 1
    try:
        write_dev_env(DEV_ENV_FILE, env)
        # The worker starts first, and the API only once the worker has announced its
        # jobTypes: when the API answers, the jobs it accepts have somewhere to run.
        # Each child is a `pulse` subcommand, which sets up its own metrics folder and env.
        metrics = DEV_STATE_DIR / "metrics"
        api_args = ["--port", str(api_port), "--metrics-port", str(api_metrics_port)]
        stages: list[dict[str, list[str]]] = [
            {
                "worker": _pulse(
                    "worker", "--concurrency", str(concurrency), "--events", "--metrics-dir", str(metrics / "worker")
                )
            },
            {
                "api": _pulse("api", *api_args, "--metrics-dir", str(metrics / "api")),
                "flower": _pulse("flower", "--port", str(flower_port)),
                "receiver": _pulse("demo-receiver", "--port", str(receiver_port)),
            },
        ]
        _print_banner(settings, redis, api_port, flower_port, worker_metrics_port, api_metrics_port, receiver_port)
        redis_client = connect(settings.redis_url)
        code = Supervisor(env).run(stages, ready=lambda: bool(live_job_types(redis_client)))
    finally:
        # No orphan: whatever stopped the stack (or its start-up), the embedded Redis stops
        # too, and .pulse/env no longer points other commands at it.
        DEV_ENV_FILE.unlink(missing_ok=True)
        if redis is not None:
            redis.stop()
    sys.exit(code)


#: The settings a second terminal needs to reach the dev stack (written to .pulse/env).
DEV_ENV_NAMES = ("PULSE_REDIS_URL", "PULSE_BROKER_URL", "PULSE_TENANTS_FILE", "PULSE_HANDLER_MODULES")


def write_dev_env(path: Path, env: Mapping[str, str]) -> None:
    """Write the dev stack's settings as ``NAME=value`` lines a shell can source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}={shlex.quote(env[name])}" for name in DEV_ENV_NAMES if env.get(name)]
    path.write_text("# Written by `pulse dev`: set -a; . .pulse/env; set +a\n" + "\n".join(lines) + "\n")


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (bind test, as a server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _print_banner(
    settings: Settings,
    redis: EmbeddedRedis | None,
    api_port: int,
    flower_port: int,
    worker_metrics_port: int,
    api_metrics_port: int,
    receiver_port: int = DEV_RECEIVER_PORT,
) -> None:
    where = f"embedded, data in {DEV_STATE_DIR / 'redis'}" if redis else "from PULSE_REDIS_URL"
    click.echo(
        "\n".join(
            [
                "Pulse dev stack",
                f"  Redis   {settings.redis_url}  ({where})",
                f"  API     http://127.0.0.1:{api_port}  (docs: /docs, /openapi.json)",
                f"          metrics: http://127.0.0.1:{api_metrics_port}/metrics"
                if api_metrics_port
                else "          metrics: off",
                "  Worker  1 Celery worker, handlers: " + ", ".join(settings.handler_modules),
                f"          metrics: http://127.0.0.1:{worker_metrics_port}/metrics"
                if worker_metrics_port
                else "          metrics: off",
                f"  Flower  http://127.0.0.1:{flower_port}  (metrics: /metrics)",
                f"  Receiver http://127.0.0.1:{receiver_port}/hook  (a demo HTTP handler endpoint; "
                "docs/http-handlers.md)",
                "Try it:",
                f"  curl -s -X POST http://127.0.0.1:{api_port}/v1/jobs \\",
                f"    -H 'Authorization: Bearer {DEV_DEMO_KEY}' \\",
                "    -H 'Content-Type: application/json' \\",
                """    -d '{"jobType": "diag.echo", "payload": {"hello": "world"}}'""",
                f"Settings for a second terminal: {DEV_ENV_FILE}",
                "Ctrl-C stops everything.",
                "",
            ]
        ),
        err=True,
    )


class Supervisor:
    """Runs child processes in the foreground; stops all of them when any stops or on a signal."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def run(
        self,
        stages: Sequence[Mapping[str, Sequence[str]]],
        ready: Callable[[], bool],
        *,
        ready_timeout: float = 120.0,
    ) -> int:
        """Start ``stages`` in order, each after ``ready()`` holds; then watch until stopped."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        code = 0
        for number, stage in enumerate(stages):
            for name, command in stage.items():
                self._children[name] = subprocess.Popen(list(command), env=dict(self._env))
            if number < len(stages) - 1:
                code = self._wait(until=ready, timeout=ready_timeout)
                if self._stopping:
                    break
        if not self._stopping:
            code = self._wait(until=lambda: False, timeout=None)
        self._stop_all()
        return code

    def _wait(self, until: Callable[[], bool], timeout: float | None) -> int:
        """Poll children until ``until()`` or a stop; 1 when a child died or time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopping:
            for name, child in self._children.items():
                if child.poll() is not None:
                    click.echo(f"pulse dev: {name} exited with {child.returncode}", err=True)
                    self._stopping = True
                    return 1
            try:
                if until():
                    return 0
            except Exception as exc:  # not ready yet (e.g. Redis still starting)
                click.echo(f"pulse dev: waiting: {exc}", err=True)
            if deadline is not None and time.monotonic() > deadline:
                click.echo("pulse dev: the worker did not become ready in time", err=True)
                self._stopping = True
                return 1
            time.sleep(0.2)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for child in self._children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self._children.values():
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _exec(command: Sequence[str], env: Mapping[str, str]) -> None:
    os.execve(command[0], list(command), dict(env))


if __name__ == "__main__":
    main()
