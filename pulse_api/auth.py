"""Who is asking: the tenant behind the ``Authorization: Bearer <key>`` header."""

from __future__ import annotations

from flask import g, request

from pulse_api.services import services
from pulse_core.errors import AuthenticationFailed
from pulse_core.tenants import Tenant


def authenticate_request() -> None:
    """``before_request`` hook: resolve the tenant or refuse with 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("send 'Authorization: Bearer <API key>'")
    tenant = services().tenants.authenticate(key.strip())
    if tenant is None:
        raise AuthenticationFailed("the API key is not valid")
    g.tenant = tenant


def current_tenant() -> Tenant:
    """The tenant authenticated for this request."""
    tenant: Tenant = g.tenant
    return tenant
