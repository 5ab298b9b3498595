"""A tiny HTTP handler endpoint for the dev stack (``pulse dev`` runs it on loopback).

It answers ``POST /hook`` as a tenant's receiver would: it checks the Standard
Webhooks signature with the ``standardwebhooks`` package and answers ``200`` with
``{"verified": true, "echo": <payload>}``, or ``401`` when the signature does not
verify (the job then ends ``dead``: a permanent failure).

A real receiver keeps the secret it was shown at registration. This demo one runs
beside the operator's stack, so it reads the registration's secrets from Redis with
``PULSE_SECRET_KEY`` instead: no copy-paste step in the demo.
"""

from __future__ import annotations

import json
import logging
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from pulse_core.http_handlers.config import HttpHandlerSettings
from pulse_core.http_handlers.registrations import Registrations
from pulse_core.redis_client import connect

log = logging.getLogger("pulse.demo-receiver")


def serve(host: str, port: int) -> None:
    """Serve ``POST /hook`` until interrupted."""
    registrations = Registrations(connect(os.environ["PULSE_REDIS_URL"]), HttpHandlerSettings.from_env(os.environ))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                job = json.loads(raw)
                found = registrations.get(job["tenantId"], job["jobType"])
            except (ValueError, KeyError, TypeError):
                self._answer(400, {"error": "not a Pulse delivery"})
                return
            if found is None:
                self._answer(404, {"error": "no such registration"})
                return
            headers = {k: v for k, v in self.headers.items()}
            for secret in registrations.signing_secrets(found):
                try:
                    Webhook(secret).verify(raw, headers)
                except WebhookVerificationError:
                    continue
                self._answer(200, {"verified": True, "echo": job["payload"], "attempt": job["attempt"]})
                return
            self._answer(401, {"error": "the signature does not verify"})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"demo receiver on http://{host}:{port}/hook", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
