"""The import rules between Pulse's packages and rooms, checked on the source itself.

Rooms, lowest first (docs/architecture.md draws the map):

- values: the modules at the top of ``pulse_core`` (jobs, keys, policy, errors, settings,
  tenants, handlers, context, redis_client) import only each other;
- ``pulse_core.telemetry`` and ``pulse_core.store`` import values;
- ``pulse_core.guards`` imports values and the store;
- ``pulse_core.broker`` imports values, telemetry and the store;
- ``pulse_core.http_handlers`` (HTTP handler registrations, SSRF guard, signing) imports values;
- ``pulse_core.submission`` (the submit use case) may import every room of ``pulse_core``;
- ``pulse_api``, ``pulse_worker`` and ``pulse_cli`` import ``pulse_core`` and themselves only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pulse_core", "pulse_api", "pulse_worker", "pulse_cli")
CORE_ROOMS = ("values", "telemetry", "store", "guards", "broker", "http_handlers", "submission")

ALLOWED: dict[str, set[str]] = {
    "values": {"values"},
    "telemetry": {"values", "telemetry"},
    "store": {"values", "store"},
    "guards": {"values", "store", "guards"},
    "broker": {"values", "telemetry", "store", "broker"},
    "http_handlers": {"values", "http_handlers"},
    "submission": set(CORE_ROOMS),
    "pulse_api": {*CORE_ROOMS, "pulse_api"},
    "pulse_worker": {*CORE_ROOMS, "pulse_worker"},
    "pulse_cli": {*CORE_ROOMS, "pulse_cli"},
}

#: The three imports that once ran back up, named so that a regression says which.
FORBIDDEN_EDGES = (
    ("pulse_core.telemetry.metrics", "pulse_core.broker.celery_app"),
    ("pulse_core.guards.execution_limits", "pulse_core.telemetry.metrics"),
    ("pulse_core.handlers", "pulse_core.guards.execution_limits"),
)

#: What importing the handler API must not load (``python -X importtime``).
HEAVY = ("celery", "kombu", "redis", "limits", "prometheus_client")


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to, or None outside Pulse."""
    parts = module.split(".")
    if parts[0] in ("pulse_api", "pulse_worker", "pulse_cli"):
        return parts[0]
    if parts[0] != "pulse_core":
        return None
    if len(parts) >= 2 and parts[1] in CORE_ROOMS[1:]:
        return parts[1]
    return "values"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> set[str]:
    """Every Pulse module ``source`` imports, at any depth of the file (lazy imports count)."""
    found: set[str] = set()
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # ``from a.b import c``: c may be a module (a.b.c) or a name in a.b; both count.
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if room_of(name) is not None}


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that break the room rules or a named forbidden edge."""
    room = room_of(module)
    assert room is not None
    wrong = [f"{module} -> {name}" for name in sorted(imported) if room_of(name) not in ALLOWED[room]]
    for source, target in FORBIDDEN_EDGES:
        if module == source and any(name == target or name.startswith(target + ".") for name in imported):
            wrong.append(f"{module} -> {target} (named forbidden edge)")
    return wrong


def all_modules() -> list[tuple[str, Path]]:
    return [(module_name(path), path) for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))]


def test_every_import_in_pulse_runs_down_the_rooms() -> None:
    # given every module of the four packages
    modules = all_modules()
    assert len(modules) > 40
    # when each one's imports are checked against the room rules
    wrong = [v for name, path in modules for v in violations(name, imports_of(path.read_text(), name))]
    # then none runs back up
    assert wrong == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("pulse_core.telemetry.metrics", "from pulse_core.broker.celery_app import waiting_lists\n"),
        ("pulse_core.guards.execution_limits", "from pulse_core.telemetry import metrics\n"),
        ("pulse_core.handlers", "from pulse_core.guards.execution_limits import ExecutionLimits\n"),
        ("pulse_core.jobs", "def f():\n    from pulse_core.store import job_store\n"),
        ("pulse_core.store.recovery", "import pulse_core.broker.celery_app\n"),
        ("pulse_api.jobs", "from pulse_worker.task import run_job\n"),
        ("pulse_worker.task", "from pulse_api import create_app\n"),
        ("pulse_core.settings", "from pulse_cli.embedded_redis import EmbeddedRedis\n"),
    ],
)
def test_an_import_that_runs_back_up_is_caught(module: str, source: str) -> None:
    # given a module whose source imports upward
    # when the rules check it
    found = violations(module, imports_of(source, module))
    # then the checker names it
    assert found, f"{module} importing upward was not caught"


def test_importing_the_handler_api_loads_no_broker_store_or_metrics_library() -> None:
    # given a fresh interpreter
    # when it imports only the handler API, timing every import
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pulse_core.handlers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "pulse_core.handlers" in loaded
    # then none of the heavy libraries was loaded
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert heavy == []
