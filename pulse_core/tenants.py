"""The tenants file: who may submit, with which keys, under which limits.

TOML, parsed once and validated; any problem raises ``ConfigError`` naming the
file and the offending entry. API keys are stored only as SHA-256 hex digests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limits import parse_many

from pulse_core.errors import ConfigError

DEFAULT_RATE_LIMIT = "100/second"
_TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Tenant:
    """One tenant and what it is allowed."""

    tenant_id: str
    api_key_sha256: tuple[str, ...]
    rate_limit: str


@dataclass(frozen=True)
class TenantsConfig:
    """All tenants, as loaded from one tenants file."""

    tenants: Mapping[str, Tenant]
    default_rate_limit: str = DEFAULT_RATE_LIMIT

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
        unknown = set(raw) - {"defaults", "tenants"}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
        defaults = _table(raw.get("defaults", {}), f"{source}: [defaults]")
        default_rate = _rate_limit(
            defaults.get("rate_limit", DEFAULT_RATE_LIMIT), f"{source}: [defaults] rate_limit"
        )
        tenants_raw = _table(raw.get("tenants", {}), f"{source}: [tenants]")
        tenants: dict[str, Tenant] = {}
        owner_of: dict[str, str] = {}
        for tenant_id, body in tenants_raw.items():
            where = f"{source}: [tenants.{tenant_id}]"
            if not _TENANT_ID_RE.match(tenant_id):
                raise ConfigError(f"{where}: a tenant id is 1-63 of a-z, 0-9, '_' or '-'")
            table = _table(body, where)
            hashes = table.get("api_key_sha256")
            if isinstance(hashes, str):
                hashes = [hashes]
            if not isinstance(hashes, list) or not hashes:
                raise ConfigError(f"{where}: api_key_sha256 must list at least one key digest")
            for digest in hashes:
                if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                    raise ConfigError(
                        f"{where}: api_key_sha256 entry {digest!r} is not 64 lowercase hex digits"
                    )
                if digest in owner_of:
                    raise ConfigError(f"{where}: key digest already belongs to {owner_of[digest]}")
                owner_of[digest] = tenant_id
            rate = _rate_limit(table.get("rate_limit", default_rate), f"{where} rate_limit")
            tenants[tenant_id] = Tenant(tenant_id, tuple(hashes), rate)
        return cls(tenants=tenants, default_rate_limit=default_rate)

    def authenticate(self, api_key: str) -> Tenant | None:
        """The tenant owning ``api_key``, comparing digests in constant time."""
        digest = hash_api_key(api_key)
        found: Tenant | None = None
        # Compare against every digest without stopping early, so timing does not
        # reveal how many tenants or keys were checked before a match.
        for tenant in self.tenants.values():
            for candidate in tenant.api_key_sha256:
                if hmac.compare_digest(candidate, digest):
                    found = tenant
        return found


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
        parse_many(value)
    except ValueError as exc:
        raise ConfigError(f"{where}={value!r} is not a rate limit: {exc}") from None
    return value
