"""Process settings, read once from ``PULSE_*`` environment variables and validated.

Each setting is declared once, as a field of ``Settings`` made by ``setting()``:
its variable, kind (how the text is checked and converted), default, one-line
doc and docs group. ``Settings.from_env``, ``Settings.to_env`` (child processes,
tests) and the configuration tables in the docs (``docs_table``) are all made
from those declarations.

A bad value, or a ``PULSE_*`` variable that no setting declares, raises
``ConfigError`` naming the variable, so start-up stops with a message that says
what to fix.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pulse_core.errors import ConfigError

_N = TypeVar("_N", int, float)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "pulse"
DEFAULT_RESULT_MAX_BYTES = 64 * 1024
DEFAULT_JOB_TYPE_TTL_SECONDS = 30
#: How long an idempotency key remembers its job.
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: Most jobs one ``POST /v1/batches`` may carry.
DEFAULT_BATCH_MAX_JOBS = 500
#: Largest ``POST /v1/batches`` body, in bytes (each job is also held to its tenant's cap).
DEFAULT_BATCH_MAX_BYTES = 16 * 1024 * 1024
#: A running attempt's lease: refreshed by its worker every third of this; once it
#: lapses the attempt counts as crashed and the job is recovered.
DEFAULT_LEASE_SECONDS = 30.0
#: How often a worker looks for jobs whose lease lapsed or whose due time passed.
DEFAULT_SWEEP_INTERVAL_SECONDS = 10.0
#: A queued job not claimed this long after it was queued is looked at by the sweep: its
#: message is republished if it was lost (then after twice as long, and so on, up to an hour).
DEFAULT_QUEUED_CHECK_SECONDS = 60.0
#: Operator caps on per-job options (``options.maxRetries``, ``options.timeoutSeconds``).
DEFAULT_MAX_RETRIES_CAP = 20
DEFAULT_TIMEOUT_CAP_SECONDS = 900
#: The latest a job may be scheduled (``options.delaySeconds`` / ``options.runAt``).
DEFAULT_MAX_DELAY_SECONDS = 30 * 24 * 3600
#: Delays up to this travel as Celery ETA messages; longer ones wait in Redis and are
#: published by the sweep when due (so no message is held unacked for long).
DEFAULT_ETA_WINDOW_SECONDS = 300
#: The Redis broker redelivers a message not acked within this (kombu's visibility_timeout).
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
#: On SIGTERM, how long running jobs may take to finish before they are cancelled and requeued.
DEFAULT_SOFT_SHUTDOWN_SECONDS = 30.0
#: A job whose jobType no live worker announces goes back to its queue until this long
#: has passed with no announcement, then dies as ``UnknownJobTypeAtWorker``.
DEFAULT_UNKNOWN_JOB_TYPE_GRACE_SECONDS = 300.0
DEFAULT_LOG_FORMAT = "json"
LOG_FORMATS = ("json", "text")
DEFAULT_WORKER_METRICS_HOST = "127.0.0.1"
#: Ceilings, so a typo cannot reach Redis or the clock as a number they refuse: a duration
#: setting is at most 10 years (as a tenant's ``dead_letter_days``), a size at most 512 MiB
#: (Redis' largest string), a count at most a million.
MAX_SECONDS = 10 * 365 * 24 * 3600
MAX_BYTES = 512 * 1024 * 1024
MAX_COUNT = 1_000_000

#: URL schemes that name a Redis server (``is_redis_url``).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_BROKER_SCHEMES = REDIS_SCHEMES | {"amqp", "amqps", "pyamqp"}
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_BASIC_AUTH_RE = re.compile(r"^[^:,\s]+:[^,\s]+(,[^:,\s]+:[^,\s]+)*$")
_SWITCH = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}

#: The prefix every Pulse setting has; any other variable with it stops start-up.
PREFIX = "PULSE_"
#: Where each group of settings is documented (``docs_table``; a test keeps them equal).
DOC_GROUPS = {
    "basics": "README.md",
    "execution": "docs/execution-guarantees.md",
    "door": "docs/guarding-the-door.md",
    "operations": "docs/operations.md",
    "http": "docs/http-handlers.md",
}


def is_redis_url(url: str) -> bool:
    """Whether ``url`` names a Redis server (``redis://``, ``rediss://`` or ``unix://``)."""
    return urlparse(url).scheme in REDIS_SCHEMES


# -- How a setting's text becomes a value (and back, for child processes and tests) --


@dataclass(frozen=True)
class Kind:
    """One type of setting: ``parse(name, text)`` checks and converts, ``render`` writes back."""

    parse: Callable[[str, str], Any]
    render: Callable[[Any], str] = str


def _positive(parse: Callable[[str], _N], noun: str, most: int) -> Kind:
    def check(name: str, value: str) -> _N:
        try:
            number = parse(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not {noun}") from None
        if not 0 < number < math.inf:
            raise ConfigError(f"{name}={value!r} must be a finite number greater than zero")
        if number > most:
            raise ConfigError(f"{name}={value!r} must be at most {most}")
        return number

    return Kind(check)


def redacted_url(url: str) -> str:
    """``url`` with its password, if it has one, shown as ``***`` (for messages and logs)."""
    parts = urlparse(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _url(schemes: frozenset[str], *, redis_options: bool) -> Kind:
    """A URL with one of ``schemes``; a Redis one also with a port and database that
    redis-py reads as written, and (``redis_options``) only query options redis-py knows.
    A refusal shows the URL without its password."""

    def check(name: str, value: str) -> str:
        shown = redacted_url(value)
        if urlparse(value).scheme not in schemes:
            allowed = ", ".join(sorted(schemes))
            raise ConfigError(f"{name}={shown!r} is not a URL with one of the schemes: {allowed}")
        if is_redis_url(value):
            problem = _redis_url_problem(value, redis_options)
            if problem:
                raise ConfigError(f"{name}={shown!r}: {problem.replace(value, shown)}")
        return value

    return Kind(check)


def _redis_url_problem(value: str, check_options: bool) -> str | None:
    """What redis-py would fail on, or silently read otherwise, in the Redis URL ``value``."""
    from redis import ConnectionPool

    url = urlparse(value)
    try:
        url.port  # noqa: B018 (raises on a port that is not 0-65535)
    except ValueError as exc:
        return f"bad port ({exc})"
    if url.scheme != "unix" and not re.fullmatch(r"/?[0-9]*", url.path):
        return f"the database ({url.path!r}) must be a number, such as /0"
    if check_options:
        try:  # a connection as redis-py makes it from the URL (it connects on first use)
            ConnectionPool.from_url(value).make_connection()
        except (TypeError, ValueError) as exc:
            return f"redis-py cannot use it: {exc}"
    return None


def _modules(name: str, value: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in value.split(",") if part.strip())
    for module in modules:
        if not _MODULE_RE.fullmatch(module):
            raise ConfigError(f"{name}: {module!r} is not a Python module path")
    return modules


def _name(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", value):
        raise ConfigError(f"{name}={value!r}: use letters, digits, '_', '.' or '-'")
    return value


def _choice(allowed: tuple[str, ...]) -> Kind:
    def check(name: str, value: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{name}={value!r}: use one of {', '.join(allowed)}")
        return value

    return Kind(check)


def _port(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
    if not 1 <= number <= 65535:
        raise ConfigError(f"{name}={value!r} is not a TCP port (1-65535)")
    return number


def _switch(name: str, value: str) -> bool:
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name}={value!r}: use on or off") from None


def _host(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]{1,255}", value):
        raise ConfigError(f"{name}={value!r} is not a host name or address")
    return value


def _basic_auth(name: str, value: str) -> str:
    if not _BASIC_AUTH_RE.fullmatch(value):
        raise ConfigError(f"{name}: expected user:password[,user:password...]")
    return value


SECONDS = _positive(int, "a whole number", MAX_SECONDS)
SECONDS_FLOAT = _positive(float, "a number", MAX_SECONDS)
BYTES = _positive(int, "a whole number", MAX_BYTES)
COUNT = _positive(int, "a whole number", MAX_COUNT)
TEXT = Kind(lambda _name, value: value)
PATH = Kind(lambda _name, value: Path(value))
MODULES = Kind(_modules, ",".join)
NAME = Kind(_name)
PORT = Kind(_port)
HOST = Kind(_host)
SWITCH = Kind(_switch, lambda on: "on" if on else "off")
BASIC_AUTH = Kind(_basic_auth)


@dataclass(frozen=True)
class Declared:
    """What ``setting()`` records about one field: its variable, kind, doc and docs group."""

    env: str
    kind: Kind
    doc: str
    group: str
    #: How the default reads in the docs, when ``repr`` of the value would not do.
    shown: str | None = None
    #: Unset: take this other field's value (the broker defaults to the Redis URL).
    fallback: str | None = None


def setting(
    env: str,
    default: Any,
    kind: Kind,
    doc: str,
    *,
    group: str,
    shown: str | None = None,
    fallback: str | None = None,
    secret: bool = False,
) -> Any:
    """Declare one setting: a dataclass field that ``from_env``, the docs and the tests share."""
    if group not in DOC_GROUPS:
        raise ValueError(f"{env}: unknown docs group {group!r}")
    meta = {"setting": Declared(env, kind, doc, group, shown, fallback)}
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a Pulse process needs to know about its environment.

    Each field is one ``PULSE_*`` variable, declared once with ``setting()``.
    """

    redis_url: str = setting(
        "PULSE_REDIS_URL",
        DEFAULT_REDIS_URL,
        _url(REDIS_SCHEMES, redis_options=True),
        "Redis for the job store and the jobType directory",
        group="basics",
        shown=f"`{DEFAULT_REDIS_URL}` (`pulse dev`: embedded)",
    )
    broker_url: str = setting(
        "PULSE_BROKER_URL",
        DEFAULT_REDIS_URL,
        _url(_BROKER_SCHEMES, redis_options=False),
        "Celery broker (`redis://` or `amqp://`)",
        group="basics",
        shown="the Redis URL",
        fallback="redis_url",
    )
    tenants_file: Path | None = setting(
        "PULSE_TENANTS_FILE",
        None,
        PATH,
        "the tenants TOML file (required by the API)",
        group="basics",
        shown="`pulse dev`: `deploy/tenants.dev.toml`",
    )
    handler_modules: tuple[str, ...] = setting(
        "PULSE_HANDLER_MODULES",
        (),
        MODULES,
        "handler modules a worker imports (comma-separated)",
        group="basics",
        shown="none (`pulse dev` adds `pulse_worker.diagnostics`)",
    )
    default_queue: str = setting("PULSE_DEFAULT_QUEUE", DEFAULT_QUEUE, NAME, "the shared queue", group="basics")
    result_max_bytes: int = setting(
        "PULSE_RESULT_MAX_BYTES",
        DEFAULT_RESULT_MAX_BYTES,
        BYTES,
        "cap on a handler's JSON result",
        group="basics",
    )
    job_type_ttl_seconds: int = setting(
        "PULSE_JOB_TYPE_TTL_SECONDS",
        DEFAULT_JOB_TYPE_TTL_SECONDS,
        SECONDS,
        "how long a worker's jobType announcement lasts without a heartbeat",
        group="basics",
    )
    idempotency_ttl_seconds: int = setting(
        "PULSE_IDEMPOTENCY_TTL_SECONDS",
        DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        SECONDS,
        "how long an idempotency key remembers its job",
        group="door",
    )
    batch_max_jobs: int = setting(
        "PULSE_BATCH_MAX_JOBS",
        DEFAULT_BATCH_MAX_JOBS,
        COUNT,
        "most jobs in one `POST /v1/batches`",
        group="door",
    )
    batch_max_bytes: int = setting(
        "PULSE_BATCH_MAX_BYTES",
        DEFAULT_BATCH_MAX_BYTES,
        BYTES,
        "largest batch body, in bytes (each job is also held to `max_payload_bytes`)",
        group="door",
        shown="`16777216` (16 MiB)",
    )
    lease_seconds: float = setting(
        "PULSE_LEASE_SECONDS",
        DEFAULT_LEASE_SECONDS,
        SECONDS_FLOAT,
        "a running attempt's lease; its worker refreshes it every third of this",
        group="execution",
    )
    sweep_interval_seconds: float = setting(
        "PULSE_SWEEP_INTERVAL_SECONDS",
        DEFAULT_SWEEP_INTERVAL_SECONDS,
        SECONDS_FLOAT,
        "how often a worker looks for jobs whose lease lapsed or whose due time passed",
        group="execution",
    )
    queued_check_seconds: float = setting(
        "PULSE_QUEUED_CHECK_SECONDS",
        DEFAULT_QUEUED_CHECK_SECONDS,
        SECONDS_FLOAT,
        "a queued job not claimed this long after it was queued has its message republished by the sweep",
        group="execution",
    )
    dispatch_depth: int | None = setting(
        "PULSE_DISPATCH_DEPTH",
        None,
        COUNT,
        "messages a queue holds on its broker; the rest wait in Pulse's ready sets, dispatched in fair "
        "order (a tenant's flood delays another tenant's next job by at most this many jobs plus the "
        "running ones). Unset: derived from worker capacity, the summed pool concurrency of the "
        "queue's live workers (at least 1), as they announce it with their jobTypes",
        group="execution",
        shown="unset: derived from worker capacity",
    )
    max_retries_cap: int = setting(
        "PULSE_MAX_RETRIES_CAP",
        DEFAULT_MAX_RETRIES_CAP,
        COUNT,
        "the most `options.maxRetries` a job may ask for",
        group="execution",
    )
    timeout_cap_seconds: int = setting(
        "PULSE_TIMEOUT_CAP_SECONDS",
        DEFAULT_TIMEOUT_CAP_SECONDS,
        SECONDS,
        "the most `options.timeoutSeconds` a job may ask for",
        group="execution",
    )
    max_delay_seconds: int = setting(
        "PULSE_MAX_DELAY_SECONDS",
        DEFAULT_MAX_DELAY_SECONDS,
        SECONDS,
        "the latest a job may be scheduled (`options.delaySeconds` / `options.runAt`)",
        group="execution",
        shown="`2592000` (30 days)",
    )
    eta_window_seconds: int = setting(
        "PULSE_ETA_WINDOW_SECONDS",
        DEFAULT_ETA_WINDOW_SECONDS,
        SECONDS,
        "without the fair dispatcher, delays up to this travel as Celery ETA messages (with it they wait "
        "parked in Redis); a delay within it is also watched a lease past its due time",
        group="execution",
    )
    visibility_timeout_seconds: int = setting(
        "PULSE_VISIBILITY_TIMEOUT_SECONDS",
        DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        SECONDS,
        "kombu's visibility timeout: Pulse's Redis transport keeps no unacked record, so it only "
        "governs records a stock kombu consumer left in kombu's unacked hash (restored once this old)",
        group="execution",
    )
    soft_shutdown_seconds: float = setting(
        "PULSE_SOFT_SHUTDOWN_SECONDS",
        DEFAULT_SOFT_SHUTDOWN_SECONDS,
        SECONDS_FLOAT,
        "on SIGTERM, how long running jobs may take to finish before they are requeued",
        group="execution",
    )
    unknown_job_type_grace_seconds: float = setting(
        "PULSE_UNKNOWN_JOB_TYPE_GRACE_SECONDS",
        DEFAULT_UNKNOWN_JOB_TYPE_GRACE_SECONDS,
        SECONDS_FLOAT,
        "how long a job whose jobType no live worker of its queue announces waits before it dies as "
        "`UnknownJobTypeAtWorker`",
        group="execution",
    )
    log_format: str = setting(
        "PULSE_LOG_FORMAT",
        DEFAULT_LOG_FORMAT,
        _choice(LOG_FORMATS),
        "`json` (one object per line) or `text`",
        group="operations",
    )
    api_access_log: bool = setting(
        "PULSE_API_ACCESS_LOG",
        False,
        SWITCH,
        "`on`: the API logs one access line per request (gunicorn's access log), beside the app's own lines",
        group="operations",
    )
    metrics_enabled: bool = setting(
        "PULSE_METRICS",
        True,
        SWITCH,
        "`off`: record no Prometheus metrics at all (`on`/`off`, also `true`/`false`, `1`/`0`, `yes`/`no`)",
        group="operations",
    )
    api_metrics_port: int | None = setting(
        "PULSE_API_METRICS_PORT",
        None,
        PORT,
        "port of the API's Prometheus endpoint, served by the gunicorn master apart from the public port",
        group="operations",
        shown="none: no endpoint (`pulse api` sets it from `--metrics-port`, default 9807)",
    )
    api_metrics_host: str = setting(
        "PULSE_API_METRICS_HOST",
        DEFAULT_WORKER_METRICS_HOST,
        HOST,
        "address the API's Prometheus endpoint listens on",
        group="operations",
    )
    worker_metrics_port: int | None = setting(
        "PULSE_WORKER_METRICS_PORT",
        None,
        PORT,
        "port of a worker's Prometheus endpoint",
        group="operations",
        shown="none: the worker serves no metrics (`pulse dev`: 9808)",
    )
    worker_metrics_host: str = setting(
        "PULSE_WORKER_METRICS_HOST",
        DEFAULT_WORKER_METRICS_HOST,
        HOST,
        "address the worker's Prometheus endpoint listens on",
        group="operations",
    )
    flower_basic_auth: str | None = setting(
        "PULSE_FLOWER_BASIC_AUTH",
        None,
        BASIC_AUTH,
        "`user:password[,user:password...]` that `pulse flower` asks for",
        group="operations",
        shown="none",
        secret=True,
    )
    # HTTP handlers: declared here (one table of every PULSE_* name); parsed and checked
    # by pulse_core.http_handlers.config.HttpHandlerSettings.
    secret_key: str | None = setting(
        "PULSE_SECRET_KEY",
        None,
        TEXT,
        "Fernet key encrypting HTTP handlers' signing secrets at rest "
        "(`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`). "
        "Without it nothing can be registered (`503`); once any registration exists, the API and "
        "workers refuse to start without it",
        group="http",
        shown="none",
        secret=True,
    )
    http_handler_allow: str | None = setting(
        "PULSE_HTTP_HANDLER_ALLOW",
        None,
        TEXT,
        "comma-separated CIDRs to allow although private (`10.20.0.0/16`), and `http` to allow plain "
        "`http://`. `pulse dev` sets `127.0.0.0/8,::1/128,http`",
        group="http",
        shown="none",
    )
    http_handler_hosts: str | None = setting(
        "PULSE_HTTP_HANDLER_HOSTS",
        None,
        TEXT,
        "`name=address` pairs resolved before DNS (closed networks, tests)",
        group="http",
        shown="none",
    )
    http_retry_after_max_seconds: float = setting(
        "PULSE_HTTP_RETRY_AFTER_MAX_SECONDS",
        300.0,
        SECONDS_FLOAT,
        "the longest `Retry-After` an HTTP handler's answer is honoured for",
        group="http",
    )

    @classmethod
    def from_process_env(cls, environ: Mapping[str, str], *, cwd: Path | None = None) -> Settings:
        """``from_env`` for a process started by hand: with no ``PULSE_REDIS_URL`` set, the
        URLs of a ``pulse dev`` stack running from this folder (``.pulse/env``) are used,
        so `pulse` and `celery` commands in a second terminal reach it as they are."""
        return cls.from_env(with_dev_stack(environ, cwd or Path.cwd()))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``PULSE_*`` variables; raise ``ConfigError`` on a bad one.

        An empty variable counts as unset. A ``PULSE_*`` variable that no setting
        declares (a typo) is refused too, with the nearest declared name.
        """
        declared = {d.env for _, d in declarations()}
        for name in sorted(env):
            if name.startswith(PREFIX) and name not in declared:
                near = difflib.get_close_matches(name, declared, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"{name} is not a Pulse setting{hint}; see the configuration table in the README")
        values: dict[str, Any] = {}
        for spec, decl in declarations():
            text = env.get(decl.env)
            if text:
                values[spec.name] = decl.kind.parse(decl.env, text)
            elif decl.fallback is not None:
                values[spec.name] = values.get(decl.fallback, getattr(cls, decl.fallback))
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``PULSE_*`` variables that give these settings back (unset ones left out)."""
        return {
            decl.env: decl.kind.render(getattr(self, spec.name))
            for spec, decl in declarations()
            if getattr(self, spec.name) is not None
        }

    def require_tenants_file(self) -> Path:
        """The tenants file path, or a ``ConfigError`` that says how to set it."""
        if self.tenants_file is None:
            raise ConfigError(
                "PULSE_TENANTS_FILE is not set: point it at a tenants TOML file "
                "(deploy/tenants.dev.toml is a working example)"
            )
        return self.tenants_file


def declarations() -> list[tuple[Field[Any], Declared]]:
    """Every setting, in declaration order, with its dataclass field."""
    return [(spec, spec.metadata["setting"]) for spec in fields(Settings)]


def docs_table(group: str) -> str:
    """The markdown table of one docs group's settings (the docs hold exactly this)."""
    lines = ["| variable | meaning | default |", "|---|---|---|"]
    for spec, decl in declarations():
        if decl.group == group:
            shown = decl.shown if decl.shown is not None else f"`{decl.kind.render(spec.default)}`"
            lines.append(f"| `{decl.env}` | {decl.doc} | {shown} |")
    return "\n".join(lines) + "\n"


#: Where ``pulse dev`` writes the URLs of the stack it runs (relative to where it runs).
DEV_ENV_FILE = Path(".pulse") / "env"
#: The settings a second terminal takes from ``DEV_ENV_FILE``: where the stack is, no more.
DEV_STACK_NAMES = ("PULSE_REDIS_URL", "PULSE_BROKER_URL")


def with_dev_stack(environ: Mapping[str, str], cwd: Path) -> Mapping[str, str]:
    """``environ``, plus the dev stack's URLs from ``cwd/.pulse/env`` when it sets no Redis URL."""
    path = cwd / DEV_ENV_FILE
    if environ.get("PULSE_REDIS_URL") or not path.is_file():
        return environ
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and name in DEV_STACK_NAMES and not environ.get(name):
            found[name] = shlex.split(value)[0] if value.strip() else ""
    return {**environ, **found}


if __name__ == "__main__":  # python -m pulse_core.settings [group]: print the docs tables
    import sys

    for name in sys.argv[1:] or list(DOC_GROUPS):
        print(f"<!-- {DOC_GROUPS[name]} -->\n{docs_table(name)}")
