"""The SSRF guard: which URLs may be registered, and which addresses a delivery may reach.

A URL is checked at registration (shape, scheme, and every address its host resolves
to) and again at every delivery, after resolution: the delivery then connects to the
address that passed, never resolving the name a second time, so a DNS answer that
changes in between (rebinding) cannot slip a private address through.

Refused unless the operator allows them (``PULSE_HTTP_HANDLER_ALLOW``): loopback,
private (RFC 1918, CGNAT), link-local (cloud metadata ``169.254.169.254`` included),
multicast, unspecified, reserved and IPv6 unique-local addresses, and ``http://``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from pulse_core.http_handlers.config import HttpHandlerSettings, IpAddress

MAX_URL_LENGTH = 2048


class UrlRefused(ValueError):
    """The URL (or where it leads) is not allowed; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where a URL leads: its parts and the host name to send as ``Host`` and SNI."""

    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str, settings: HttpHandlerSettings) -> Target:
    """Check the URL's shape; raise ``UrlRefused`` saying what is wrong."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is {len(url)} characters; at most {MAX_URL_LENGTH}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("not an absolute http(s) URL")
    if scheme == "http" and not settings.allow_plain_http:
        raise UrlRefused("plain http:// is not allowed; use https://")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL carries credentials; send them as static headers instead")
    if parts.fragment:
        raise UrlRefused("the URL has a #fragment")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UrlRefused("the URL contains spaces or control characters")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), path)


def refusal(address: IpAddress, settings: HttpHandlerSettings) -> str | None:
    """Why ``address`` may not be reached, or ``None`` when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in settings.allowed_networks):
        return None
    for kind, hit in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if hit:
            return f"{address} is a {kind} address"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"):
        return f"{address} is a private (shared, CGNAT) address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def resolve(host: str, port: int, settings: HttpHandlerSettings) -> list[IpAddress]:
    """Every address ``host`` resolves to (the settings' hosts map first, then DNS)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    mapped = settings.hosts.get(host)
    if mapped is not None:
        return [mapped]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"the host {host!r} does not resolve: {exc}") from None
    found: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def checked_address(target: Target, settings: HttpHandlerSettings) -> IpAddress:
    """Resolve ``target``'s host and return an address to connect to; every address it
    resolves to must pass (one bad answer refuses the name)."""
    addresses = resolve(target.host, target.port, settings)
    if not addresses:
        raise UrlRefused(f"the host {target.host!r} resolves to no address")
    for address in addresses:
        why = refusal(address, settings)
        if why is not None:
            named = "" if target.host == str(address) else f"{target.host} resolves to "
            raise UrlRefused(f"{named}{why}; refused (PULSE_HTTP_HANDLER_ALLOW lets an operator allow it)")
    return addresses[0]


def check_url(url: str, settings: HttpHandlerSettings) -> Target:
    """The registration-time check: shape, scheme and resolved addresses."""
    target = parse_url(url, settings)
    checked_address(target, settings)
    return target
