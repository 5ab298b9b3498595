"""Handlers over HTTP: a tenant registers an endpoint for a jobType of its own, and
workers deliver each job of that jobType to it as a signed request (Standard Webhooks).

- ``config``: the operator's settings (``PULSE_SECRET_KEY``, ``PULSE_HTTP_HANDLER_ALLOW``, ...).
- ``guard``: the SSRF guard, at registration and again at every delivery.
- ``registrations``: the registration records in Redis, secrets encrypted at rest.
- ``signing``: Standard Webhooks secrets and signatures.

The delivery itself lives in the data plane (``pulse_worker.http_delivery``); the
registration API in the control plane (``pulse_api.handlers_http``).
"""
