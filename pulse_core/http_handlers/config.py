"""The operator's settings for HTTP handlers, read once from ``PULSE_*`` variables.

- ``PULSE_SECRET_KEY``: a Fernet key (``Fernet.generate_key()``) that encrypts signing
  secrets at rest. Without it no endpoint can be registered, and once any is registered
  the API and the workers refuse to start.
- ``PULSE_HTTP_HANDLER_ALLOW``: comma-separated CIDRs that the SSRF guard lets through
  although they are private, loopback, ... (e.g. ``127.0.0.0/8``), and the word ``http``
  to allow plain ``http://`` URLs. ``pulse dev`` sets ``127.0.0.0/8,::1/128,http``.
- ``PULSE_HTTP_HANDLER_HOSTS``: ``name=address`` pairs the guard resolves before DNS
  (like ``/etc/hosts``, for tests and closed networks).
- ``PULSE_HTTP_RETRY_AFTER_MAX_SECONDS``: the longest ``Retry-After`` honoured (300).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from pulse_core.errors import ConfigError

SECRET_KEY_ENV = "PULSE_SECRET_KEY"
ALLOW_ENV = "PULSE_HTTP_HANDLER_ALLOW"
HOSTS_ENV = "PULSE_HTTP_HANDLER_HOSTS"
RETRY_AFTER_MAX_ENV = "PULSE_HTTP_RETRY_AFTER_MAX_SECONDS"
DEFAULT_RETRY_AFTER_MAX_SECONDS = 300.0
#: What ``pulse dev`` allows, so the demo receiver on loopback works.
DEV_ALLOW = "127.0.0.0/8,::1/128,http"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HttpHandlerSettings:
    secret_key: str | None = None
    allowed_networks: tuple[IpNetwork, ...] = ()
    allow_plain_http: bool = False
    hosts: Mapping[str, IpAddress] = field(default_factory=dict)
    retry_after_max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpHandlerSettings:
        networks: list[IpNetwork] = []
        plain = False
        for item in (x.strip() for x in env.get(ALLOW_ENV, "").split(",")):
            if not item:
                continue
            if item.lower() == "http":
                plain = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{ALLOW_ENV}: {item!r} is neither a CIDR nor 'http'") from None
        hosts: dict[str, IpAddress] = {}
        for pair in (x.strip() for x in env.get(HOSTS_ENV, "").split(",")):
            if not pair:
                continue
            name, _, address = pair.partition("=")
            try:
                hosts[name.strip().lower()] = ipaddress.ip_address(address.strip())
            except ValueError:
                raise ConfigError(f"{HOSTS_ENV}: {pair!r} is not name=address") from None
        try:
            retry_after_max = float(env.get(RETRY_AFTER_MAX_ENV, DEFAULT_RETRY_AFTER_MAX_SECONDS))
        except ValueError:
            raise ConfigError(f"{RETRY_AFTER_MAX_ENV} must be a number of seconds") from None
        key = env.get(SECRET_KEY_ENV) or None
        if key is not None:
            from cryptography.fernet import Fernet

            try:
                Fernet(key.encode())
            except ValueError:
                raise ConfigError(
                    f"{SECRET_KEY_ENV} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "make one with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())')"
                ) from None
        return cls(
            secret_key=key,
            allowed_networks=tuple(networks),
            allow_plain_http=plain,
            hosts=hosts,
            retry_after_max_seconds=retry_after_max,
        )
