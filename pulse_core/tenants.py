"""The tenants file: who may submit, with which keys, under which limits, to which queue.

TOML, parsed once and validated; any problem raises ``ConfigError`` naming the
file and the offending entry. API keys are stored only as SHA-256 hex digests.

Routing and execution limits (``pulse_core.broker.routing``, ``pulse_core.guards.execution_limits``):

    [defaults]
    queue = "pulse"                      # the shared queue (default: PULSE_DEFAULT_QUEUE)

    [job_types."video.encode"]
    queue = "heavy"                      # every tenant's video.encode jobs
    [job_types."crm.sync"]
    rate_limit = "10/second"             # across all workers (overrides @handler)
    max_concurrency = 5

    [tenants.acme]
    api_key_sha256 = ["..."]
    max_stored_bytes = 1073741824        # storage budget (default 256 MiB; docs/guarding-the-door.md)
    queue = "acme"                       # a dedicated queue
    [tenants.acme.job_types."crm.sync"]
    queue = "acme-crm"                   # tenant x jobType beats everything
    max_concurrency = 2                  # acme's own limit, on top of the global one
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limits import RateLimitItem

from pulse_core.errors import ConfigError
from pulse_core.handlers import JOB_TYPE_RE
from pulse_core.policy import parse_rate_limit

log = logging.getLogger("pulse.config")

DEFAULT_RATE_LIMIT = "100/second"
#: Jobs not yet final a tenant may have before submissions are refused (429).
DEFAULT_MAX_PENDING = 10_000
#: Largest request body for one job, in bytes (413 above it).
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
#: Dead letters a tenant keeps at most; past it the oldest leave (their records then expire).
DEFAULT_MAX_DEAD_LETTERS = 10_000
#: Days a dead letter is kept; older ones leave the dead letters (their records then expire).
DEFAULT_DEAD_LETTER_DAYS = 30
#: Bytes a tenant's records may hold in Redis (payloads, results, errors of its jobs not yet
#: final, its dead letters and its finished jobs within their retention); past it, submissions
#: are refused (429) and a result that does not fit is not kept (the job still succeeds).
DEFAULT_MAX_STORED_BYTES = 256 * 1024 * 1024
#: Sanity bounds for the per-tenant numbers, so a typo cannot disable a guard.
_MAX_PENDING_CEILING = 100_000_000
_MAX_PAYLOAD_CEILING = 64 * 1024 * 1024
_TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: Per-tenant settings, allowed in [defaults] and overridable in [tenants.<id>].
_SETTINGS = frozenset(
    {
        "rate_limit",
        "max_pending",
        "max_payload_bytes",
        "max_dead_letters",
        "dead_letter_days",
        "max_stored_bytes",
        "weight",
        "max_running",
    }
)
#: A tenant's share of a shared queue against the others' (``pulse_core.store.dispatch``).
DEFAULT_WEIGHT = 1.0
_MAX_WEIGHT = 1000.0
#: Settings of a ``[job_types."x"]`` or ``[tenants.<id>.job_types."x"]`` table.
_JOB_TYPE_SETTINGS = frozenset({"queue", "rate_limit", "max_concurrency"})
#: Queue names: also Redis keys and AMQP queue names.
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_MAX_CONCURRENCY_CEILING = 100_000


@dataclass(frozen=True)
class JobTypeRule:
    """Where a jobType's jobs go and how fast they may run (every field optional)."""

    queue: str | None = None
    #: ``limits`` notation, counted across every worker (``pulse_core.guards.execution_limits``).
    rate_limit: str | None = None
    max_concurrency: int | None = None

    @property
    def rate_limits(self) -> tuple[RateLimitItem, ...]:
        return parse_rate_limit(self.rate_limit) if self.rate_limit else ()


@dataclass(frozen=True)
class Tenant:
    """One tenant and what it is allowed."""

    tenant_id: str
    api_key_sha256: tuple[str, ...]
    rate_limit: str
    max_pending: int = DEFAULT_MAX_PENDING
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS
    dead_letter_days: int = DEFAULT_DEAD_LETTER_DAYS
    #: The storage budget in bytes (``DEFAULT_MAX_STORED_BYTES``).
    max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES
    #: The tenant's own queue; ``None``: the shared queue.
    queue: str | None = None
    #: Per tenant x jobType routing and limits (``[tenants.<id>.job_types."x"]``).
    job_types: Mapping[str, JobTypeRule] = field(default_factory=dict)
    #: Its share of a shared queue: served ``weight`` jobs for another's one when both wait.
    weight: float = DEFAULT_WEIGHT
    #: The most of its jobs running at once across every worker (``None``: no cap); the
    #: others wait parked in Redis (``pulse_core.guards.execution_limits``).
    max_running: int | None = None

    @property
    def rate_limits(self) -> tuple[RateLimitItem, ...]:
        """The parsed ``rate_limit`` (``limits`` notation; several separated by ``;``)."""
        return parse_rate_limit(self.rate_limit)


@dataclass(frozen=True)
class TenantsConfig:
    """All tenants, as loaded from one tenants file."""

    tenants: Mapping[str, Tenant]
    default_rate_limit: str = DEFAULT_RATE_LIMIT
    default_max_pending: int = DEFAULT_MAX_PENDING
    default_max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: The shared queue named in ``[defaults]``; ``None``: ``PULSE_DEFAULT_QUEUE``.
    default_queue: str | None = None
    #: Per-jobType routing and limits (``[job_types."x"]``).
    job_types: Mapping[str, JobTypeRule] = field(default_factory=dict)
    #: Key digest -> tenant, built once: authentication is one dict lookup.
    _by_digest: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    #: Whether any tenant has a ``max_running``, and the jobTypes some tenant gives limits of
    #: its own, built once: a worker asks for each job it runs (``needs_tenant``).
    _any_max_running: bool = field(init=False, repr=False, compare=False)
    _tenant_limited: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_digest = {digest: tenant for tenant in self.tenants.values() for digest in tenant.api_key_sha256}
        object.__setattr__(self, "_by_digest", by_digest)
        object.__setattr__(self, "_any_max_running", any(tenant.max_running for tenant in self.tenants.values()))
        limited = frozenset(
            job_type
            for tenant in self.tenants.values()
            for job_type, rule in tenant.job_types.items()
            if rule.rate_limit or rule.max_concurrency
        )
        object.__setattr__(self, "_tenant_limited", limited)

    def tenant_limits_apply(self, job_type: str) -> bool:
        """Whether some tenant has limits of its own for ``job_type``, or a ``max_running``
        (one lookup, whatever the number of tenants)."""
        return self._any_max_running or job_type in self._tenant_limited

    @classmethod
    def load(cls, path: Path) -> TenantsConfig:
        """Read and validate a tenants file."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"tenants file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tenants file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"tenants file {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "tenants") -> TenantsConfig:
        """Validate an already-parsed tenants document."""
        unknown = set(raw) - {"defaults", "tenants", "job_types"}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
        defaults = _table(raw.get("defaults", {}), f"{source}: [defaults]")
        unknown = set(defaults) - _SETTINGS - {"queue"}
        if unknown:
            raise ConfigError(f"{source}: [defaults]: unknown setting(s) {sorted(unknown)}")
        default_rate = _rate_limit(defaults.get("rate_limit", DEFAULT_RATE_LIMIT), f"{source}: [defaults] rate_limit")
        bounded_defaults = _bounded_settings(defaults, _BOUNDED_DEFAULTS, f"{source}: [defaults]")
        default_weight = _weight(defaults.get("weight", DEFAULT_WEIGHT), f"{source}: [defaults] weight")
        default_running = defaults.get("max_running")
        if default_running is not None:
            where_running = f"{source}: [defaults] max_running"
            default_running = _bounded_int(default_running, where_running, _MAX_CONCURRENCY_CEILING)
        default_queue = _queue(defaults["queue"], f"{source}: [defaults] queue") if "queue" in defaults else None
        job_types = _job_type_rules(raw.get("job_types", {}), f"{source}: [job_types")
        tenants_raw = _table(raw.get("tenants", {}), f"{source}: [tenants]")
        tenants: dict[str, Tenant] = {}
        owner_of: dict[str, str] = {}
        for tenant_id, body in tenants_raw.items():
            where = f"{source}: [tenants.{tenant_id}]"
            if not _TENANT_ID_RE.fullmatch(tenant_id):
                raise ConfigError(f"{where}: a tenant id is 1-63 of a-z, 0-9, '_' or '-'")
            table = _table(body, where)
            unknown = set(table) - _SETTINGS - {"api_key_sha256", "queue", "job_types"}
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
            hashes = table.get("api_key_sha256")
            if isinstance(hashes, str):
                hashes = [hashes]
            if not isinstance(hashes, list) or not hashes:
                raise ConfigError(f"{where}: api_key_sha256 must list at least one key digest")
            for digest in hashes:
                if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
                    raise ConfigError(f"{where}: api_key_sha256 entry {digest!r} is not 64 lowercase hex digits")
                if digest in owner_of:
                    raise ConfigError(f"{where}: key digest already belongs to {owner_of[digest]}")
                owner_of[digest] = tenant_id
            rate = _rate_limit(table.get("rate_limit", default_rate), f"{where} rate_limit")
            tenants[tenant_id] = Tenant(
                tenant_id,
                tuple(hashes),
                rate,
                **_bounded_settings(table, bounded_defaults, where),
                queue=_queue(table["queue"], f"{where} queue") if "queue" in table else None,
                job_types=_job_type_rules(table.get("job_types", {}), f"{source}: [tenants.{tenant_id}.job_types"),
                weight=_weight(table.get("weight", default_weight), f"{where} weight"),
                max_running=(
                    _bounded_int(table["max_running"], f"{where} max_running", _MAX_CONCURRENCY_CEILING)
                    if "max_running" in table
                    else default_running
                ),
            )
        return cls(
            tenants=tenants,
            default_rate_limit=default_rate,
            default_max_pending=bounded_defaults["max_pending"],
            default_max_payload_bytes=bounded_defaults["max_payload_bytes"],
            default_queue=default_queue,
            job_types=job_types,
        )

    def authenticate(self, api_key: str) -> Tenant | None:
        """The tenant owning ``api_key``: one lookup of the key's SHA-256 digest, O(1) in tenants.

        Why the lookup leaks nothing useful: the table is keyed by the *digest* of the
        presented key, never by the key. Whatever a dict lookup's timing reveals is about
        how the digest of the attacker's own guess relates to stored digests; turning that
        into a valid key would need a SHA-256 preimage (a guess whose digest shares a
        prefix with a stored one tells nothing about the key behind it). The found entry
        is then confirmed with a constant-time comparison.
        """
        digest = hash_api_key(api_key)
        tenant = self._by_digest.get(digest)
        if tenant is None:
            return None
        owned = any(hmac.compare_digest(candidate, digest) for candidate in tenant.api_key_sha256)
        return tenant if owned else None


class TenantsSource:
    """A process's current tenants config, re-read when its file changes.

    ``config`` looks at the file's modification time at most every ``check_every``
    seconds and re-reads it when it changed; ``reload()`` re-reads it now (SIGHUP).
    A file that no longer validates keeps the config in force and logs why, so a
    bad edit never takes a running process down.
    """

    def __init__(
        self,
        config: TenantsConfig,
        path: Path | None = None,
        *,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._path = path
        self._check_every = check_every
        self._clock = clock
        self._stamp = _stamp(path) if path else None
        self._checked_at = clock()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> TenantsSource:
        """Read ``path`` now (``ConfigError`` if it is bad) and watch it from then on."""
        return cls(TenantsConfig.load(path), path, **kwargs)

    @property
    def config(self) -> TenantsConfig:
        """The config in force, re-read first if the file changed since the last look."""
        if self._path is not None and self._clock() - self._checked_at >= self._check_every:
            self._checked_at = self._clock()
            if _stamp(self._path) != self._stamp:
                self.reload()
        return self._config

    def reload(self) -> bool:
        """Re-read the file; ``True`` if a new config is in force, ``False`` if kept."""
        if self._path is None:
            return False
        with self._lock:
            stamp = _stamp(self._path)
            try:
                config = TenantsConfig.load(self._path)
            except ConfigError as exc:
                if stamp != self._stamp:
                    log.error("tenants file not reloaded, the previous config stays: %s", exc)
                self._stamp = stamp  # log a bad file once, not on every look
                return False
            self._stamp, self._config = stamp, config
        log.info("tenants file %s reloaded: %d tenant(s)", self._path, len(config.tenants))
        return True

    def authenticate(self, api_key: str) -> Tenant | None:
        return self.config.authenticate(api_key)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def _job_type_rules(value: Any, where: str) -> dict[str, JobTypeRule]:
    """``where`` is the table's name without its closing bracket (``[job_types``)."""
    rules: dict[str, JobTypeRule] = {}
    for job_type, body in _table(value, where + "]").items():
        at = f'{where}."{job_type}"]'
        if not JOB_TYPE_RE.fullmatch(job_type):
            raise ConfigError(f"{at}: {job_type!r} is not a valid jobType (1-128 of letters, digits, '_.:-')")
        table = _table(body, at)
        unknown = set(table) - _JOB_TYPE_SETTINGS
        if unknown:
            raise ConfigError(f"{at}: unknown setting(s) {sorted(unknown)}")
        rules[job_type] = JobTypeRule(
            queue=_queue(table["queue"], f"{at} queue") if "queue" in table else None,
            rate_limit=(_rate_limit(table["rate_limit"], f"{at} rate_limit") if "rate_limit" in table else None),
            max_concurrency=(
                _bounded_int(table["max_concurrency"], f"{at} max_concurrency", _MAX_CONCURRENCY_CEILING)
                if "max_concurrency" in table
                else None
            ),
        )
    return rules


def _queue(value: Any, where: str) -> str:
    if not isinstance(value, str) or not QUEUE_NAME_RE.fullmatch(value):
        raise ConfigError(f"{where}={value!r}: a queue name is 1-100 of letters, digits, '_.-'")
    return value


def hash_api_key(api_key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    return value


def _rate_limit(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string such as '100/second;5000/hour'")
    try:
        parse_rate_limit(value)
    except ValueError as exc:
        raise ConfigError(f"{where}={value!r} is not a rate limit: {exc}") from None
    return value


#: Whole-number settings of ``[defaults]`` and of each tenant: the default, the ceiling.
_BOUNDED = {
    "max_pending": (DEFAULT_MAX_PENDING, _MAX_PENDING_CEILING),
    "max_payload_bytes": (DEFAULT_MAX_PAYLOAD_BYTES, _MAX_PAYLOAD_CEILING),
    "max_dead_letters": (DEFAULT_MAX_DEAD_LETTERS, 10_000_000),
    "dead_letter_days": (DEFAULT_DEAD_LETTER_DAYS, 3650),
    "max_stored_bytes": (DEFAULT_MAX_STORED_BYTES, 1024**4),
}
_BOUNDED_DEFAULTS = {name: default for name, (default, _) in _BOUNDED.items()}


def _bounded_settings(table: Mapping[str, Any], fallback: Mapping[str, int], where: str) -> dict[str, int]:
    """Each whole-number setting of ``table`` (else ``fallback``'s), checked against its ceiling."""
    return {
        name: _bounded_int(table.get(name, fallback[name]), f"{where} {name}", ceiling)
        for name, (_, ceiling) in _BOUNDED.items()
    }


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number")
    if not 0 < value <= _MAX_WEIGHT:
        raise ConfigError(f"{where}={value} must be above 0 and at most {_MAX_WEIGHT:g}")
    return float(value)


def _bounded_int(value: Any, where: str, ceiling: int) -> int:
    # bool is an int in Python; "max_pending = true" is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number")
    if not 1 <= value <= ceiling:
        raise ConfigError(f"{where}={value} must be between 1 and {ceiling}")
    return value
