"""The deployment files, checked offline: compose, Kubernetes, Dockerfile, Prometheus, Grafana.

No container engine or cluster exists where the suite runs, so nothing here is started: the
compose file goes through Debian's `docker-compose config`, the Kubernetes manifests through
the Kubernetes API's JSON schemas (kubernetes-validate), the Prometheus files through
`promtool`, and each file through our own rules (non-root, probes, limits, no literal secret).
docker-compose and promtool come from `make tools` (deploy/ensure-tools.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from store.settings import Environment, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ccs-dashboard.json"
K8S_VERSION = "1.29.0"  # the oldest release the manifests are checked against (HPA v2, PDB v1)
UID = 10001

# The workers' metrics (CCS_HEALTH_PORT /metrics) as the probe and metrics contract names them;
# the API's are read from its source below.
CONTRACT_METRICS = {
    "ccs_ingest_received_total", "ccs_ingest_committed_total", "ccs_ingest_dead_letters_total",
    "ccs_ingest_backlog", "ccs_ingest_batch_seconds_bucket", "ccs_ingest_batch_seconds_sum",
    "ccs_ingest_batch_seconds_count", "ccs_ingest_commit_lag_seconds",
    "ccs_process_heartbeat_timestamp_seconds", "ccs_delivery_sent_total",
    "ccs_delivery_failed_total", "ccs_audit_chain_ok",
}
# Names that look like secrets: never a literal value outside a Secret or a secrets file.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY$|DATABASE_URL|REDIS_URL")


def tool(name: str) -> str:
    """The path of a validation tool, or a loud failure saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `make tools` (deploy/ensure-tools.sh) as root")
    return path


# ---------------------------------------------------------------------------------- compose --

@pytest.fixture(scope="module")
def compose_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets directory as deploy/compose/make-secrets.sh makes it."""
    d = tmp_path_factory.mktemp("compose") / "secrets"
    subprocess.run(["bash", str(DEPLOY / "compose" / "make-secrets.sh"), str(d)], check=True,
                   capture_output=True, timeout=60)
    return d


@pytest.fixture(scope="module")
def compose(compose_secrets: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors, env_file, interpolation)."""
    exe = tool("docker-compose")
    env = {"PATH": "/usr/bin:/bin", "CCS_SECRETS_DIR": str(compose_secrets)}
    quiet = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    out = subprocess.run([exe, "-f", str(COMPOSE), "config"], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return yaml.safe_load(out.stdout)


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image."""
    return {n: s for n, s in compose["services"].items()
            if s.get("image", "").split(":")[0].endswith("ccs-location")}


def test_compose_file_is_valid_for_docker_compose(compose: dict[str, Any]) -> None:
    expected = {"postgis", "redis", "mosquitto", "migrate", "broker-init", "broker-sync", "api",
                "alerts", "delivery"}
    assert expected <= set(compose["services"])
    assert any(n.startswith("ingest") for n in compose["services"])


def test_made_secrets_pass_the_production_settings(compose_secrets: Path,
                                                   compose: dict[str, Any]) -> None:
    # What each of our containers gets (the secrets file and its own environment, as
    # docker-compose merges them) passes the production settings' checks.
    for name, svc in ours(compose).items():
        env = {k: v for k, v in svc["environment"].items() if k.startswith("CCS_")}
        settings = Settings.model_validate({k.removeprefix("CCS_").lower(): v
                                            for k, v in env.items()})
        assert settings.environment == Environment.PRODUCTION, name
        assert len(settings.secret_key) >= 64 and settings.metrics_token, name
        assert settings.mqtt_username and settings.mqtt_device_tls, name
    assert (compose_secrets / "ccs.env").stat().st_mode & 0o077 == 0  # read by compose only


def test_compose_runs_every_process_of_ours_unprivileged_in_production(compose: dict[str, Any]) -> None:
    services = ours(compose)
    commands = {" ".join(s["command"]) for s in services.values()}
    for needed in ("python -m store.db", "python -m ingest", "python -m alerts",
                   "python -m alerts.delivery", "python -m store.broker_sync --watch"):
        assert needed in commands
    assert any(c.startswith("uvicorn api.app:app") for c in commands)
    for name, s in services.items():
        assert s["user"] == f"{UID}:{UID}", name
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in s["security_opt"], name
        assert s["environment"]["CCS_ENVIRONMENT"] == "production", name


def test_compose_starts_after_migrations_and_waits_for_them(compose: dict[str, Any]) -> None:
    for name, s in ours(compose).items():
        if name in ("migrate",):
            assert s["depends_on"]["postgis"]["condition"] == "service_healthy"
            continue
        deps = s["depends_on"]
        if name != "broker-init":  # itself after migrate; the broker waits for it
            assert deps["migrate"]["condition"] == "service_completed_successfully", name
    mosquitto = compose["services"]["mosquitto"]
    assert mosquitto["depends_on"]["broker-init"]["condition"] == "service_completed_successfully"
    assert compose["services"]["broker-sync"]["pid"] == "service:mosquitto"


def test_compose_ingest_partitions_are_consistent(compose: dict[str, Any]) -> None:
    workers = [s["environment"] for n, s in compose["services"].items() if n.startswith("ingest")]
    assert len(workers) >= 2
    assert {w["CCS_INGEST_DISPATCH"] for w in workers} == {"partition"}  # Mosquitto: see the file
    assert {w["CCS_INGEST_WORKERS"] for w in workers} == {str(len(workers))}
    assert sorted(int(w["CCS_INGEST_WORKER_INDEX"]) for w in workers) == list(range(len(workers)))
    assert len({w["CCS_INGEST_WORKER_ID"] for w in workers}) == len(workers)


def test_compose_images_are_pinned_and_secrets_are_not_literal(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for name, s in compose["services"].items():
        image = s.get("image", "")
        assert ":" in image and not image.endswith(":latest"), (name, image)
        raw = yaml.safe_load(text)["services"][name].get("environment", {})
        for key, value in (raw.items() if isinstance(raw, dict) else []):
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text)
    published = {p["target"] for p in compose["services"]["mosquitto"].get("ports", [])}
    assert published == {8883}  # phones over TLS only; the services' listener stays inside


def mosquitto_conf(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Global settings and the listeners (each with its own settings) of a Mosquitto config."""
    glob: dict[str, str] = {}
    listeners: list[dict[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            listeners.append({"listener": value})
        elif listeners:
            listeners[-1][key] = value
        else:
            glob[key] = value
    return glob, listeners


def test_compose_broker_keeps_the_secured_brokers_rules_and_adds_tls() -> None:
    base, base_listeners = mosquitto_conf(DEPLOY / "mosquitto" / "secure.conf")
    conf, listeners = mosquitto_conf(DEPLOY / "compose" / "mosquitto.conf")
    for key in ("per_listener_settings", "persistence", "autosave_interval", "max_queued_messages",
                "max_queued_bytes", "max_inflight_messages", "max_packet_size"):
        assert conf[key] == base[key], key
    assert len(listeners) == len(base_listeners)
    for listener in listeners:
        assert listener["allow_anonymous"] == "false"
        assert listener["password_file"].startswith("/mosquitto/auth/")
        assert listener["acl_file"].startswith("/mosquitto/auth/")
    phones = [ln for ln in listeners if ln.get("use_username_as_clientid") == "true"]
    assert len(phones) == 1 and phones[0]["listener"] == "8883"
    assert phones[0]["certfile"].startswith("/run/secrets/")
    assert phones[0]["keyfile"].startswith("/run/secrets/")
    assert conf["pid_file"].startswith("/mosquitto/auth/")  # where broker-sync finds it


# ------------------------------------------------------------------------------- kubernetes --

def k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every resource of every manifest (the kustomization file aside)."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


WORKLOADS = ("Deployment", "StatefulSet", "Job")


def workloads() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] in WORKLOADS}


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    seen = 0
    for name, doc in k8s_docs():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {e.message} at {e.path}")
        seen += 1
    assert seen >= 12


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files - {"secret.example.yaml"}
    assert all(not i.get("newTag", "").startswith("latest") for i in kust["images"])


def test_k8s_every_container_is_unprivileged_limited_and_pinned() -> None:
    for name, w in workloads().items():
        pod = w["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == UID, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "add" not in sc["capabilities"], (name, c["name"])
            assert sc.get("runAsUser", UID) != 0, (name, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, c["name"], kind)
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_k8s_long_running_containers_follow_the_probe_contract() -> None:
    for name, w in workloads().items():
        if w["kind"] == "Job":
            continue
        c = w["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"] for e in c.get("env", [])} | {"CCS_HEALTH_PORT"}  # from ccs-config
        api = name == "ccs-api"
        live, ready = ("/api/v1/livez", "/api/v1/readyz") if api else ("/livez", "/readyz")
        port = 8000 if api else 9100
        for probe, path in (("startupProbe", live), ("livenessProbe", live), ("readinessProbe", ready)):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert port_number(c, get["port"]) == port, (name, probe)
        assert "CCS_HEALTH_PORT" in env
    config = next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")
    assert config["data"]["CCS_HEALTH_PORT"] == "9100"
    assert config["data"]["CCS_ENVIRONMENT"] == "production"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_k8s_api_and_ingest_are_replicated_and_guarded_by_disruption_budgets() -> None:
    docs = [d for _, d in k8s_docs()]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    by_name = workloads()
    for name, least in (("ccs-api", 2), ("ccs-ingest", 3)):
        w = by_name[name]
        assert w["spec"]["replicas"] >= least, name
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(selects(p["spec"]["selector"], labels) for p in pdbs), f"no PDB selects {name}"
    ingest = by_name["ccs-ingest"]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (ingest["kind"], "ccs-ingest")
    assert hpa["spec"]["minReplicas"] >= ingest["spec"]["replicas"]
    # Stable client ids: the worker id is the pod's name, which only a StatefulSet keeps.
    assert ingest["kind"] == "StatefulSet"
    env = {e["name"]: e for e in ingest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CCS_INGEST_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["CCS_INGEST_DISPATCH"] == "share"


def test_k8s_holds_no_literal_secret() -> None:
    for name, doc in k8s_docs():
        if doc["kind"] == "Secret":
            assert name == "secret.example.yaml"
            for key, value in doc["stringData"].items():
                assert "REPLACE" in value or not SECRET_NAME.search(key), key
            continue
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)], name
        if doc["kind"] in WORKLOADS:
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    assert "value" not in e or not SECRET_NAME.search(e["name"]), (name, e["name"])


# ------------------------------------------------------------------------------- Dockerfile --

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (continuations joined), one list per stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op.upper(), args.strip()))
    return stages


def test_dockerfile_final_stage_is_unprivileged_checked_and_holds_no_secret() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert any(op == "RUN" and "--require-hashes --no-deps -r requirements.lock" in a for op, a in build)
    users = [a for op, a in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert int(users[-1].split(":")[0]) == UID
    assert any(op == "HEALTHCHECK" and "CMD" in a for op, a in final)
    assert any(op == "COPY" and a.startswith("--from=build") for op, a in final)
    for op, args in (i for stage in stages for i in stage):
        if op in ("ENV", "ARG"):
            for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", args):
                assert not SECRET_NAME.search(name), name
    env = " ".join(a for op, a in final if op == "ENV")
    assert "CCS_ENVIRONMENT=production" in env
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv/", ".git/"} <= set(ignored)


# ------------------------------------------------------------------------------- monitoring --

def test_prometheus_rules_and_config_pass_promtool(tmp_path: Path) -> None:
    exe = tool("promtool")
    rules = subprocess.run([exe, "check", "rules", str(PROMETHEUS / "rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    for name in ("prometheus.yml", "rules.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    (tmp_path / "ccs-metrics-token").write_text("a-token-for-the-check\n")
    config = subprocess.run([exe, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def source_metrics() -> set[str]:
    """Metric names the project's code exports, with the suffixes Prometheus adds."""
    names: set[str] = set()
    kinds = r"(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily)"
    for path in (p for d in ("api", "alerts", "ingest", "store") for p in (ROOT / d).rglob("*.py")):
        for kind, name in re.findall(kinds + r"\(\s*\"(ccs_\w+)\"", path.read_text()):
            if kind.startswith("Counter"):
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind.startswith(("Histogram", "Summary")):
                names |= {name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(name)
    return names


PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "offset", "bool", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, groupings, strings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        after = expr[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or after.startswith("("):
            continue  # a keyword or a function
        if re.fullmatch(r"\d+[smhdwy]", word) or (m.start() and expr[m.start() - 1].isdigit()):
            continue  # 1e3, 5m
        found.add(word)
    return found


def test_promql_reader_finds_metric_names_only() -> None:
    expr = ('histogram_quantile(0.95, sum by (worker, le) (rate(x_bucket{job=~"a.*"}[5m]))) > 2 '
            "and on (worker) y > 0 unless absent(z)")
    assert promql_metrics(expr) == {"x_bucket", "y", "z"}


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def test_alert_rules_cover_the_failures_and_read_known_metrics() -> None:
    exprs = rule_exprs()
    for needed in ("CcsIngestBacklogGrowing", "CcsProcessDown", "CcsHeartbeatMissing",
                   "CcsDeliveryFailing", "CcsAuditChainBroken", "CcsDeadLettersRising",
                   "CcsIngestCommitLagHigh"):
        assert needed in exprs
    known = CONTRACT_METRICS | source_metrics() | {"up"}
    for name, expr in exprs.items():
        unknown = promql_metrics(expr) - known
        assert not unknown, (name, unknown)


def test_dashboard_is_grafana_json_on_known_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    known = CONTRACT_METRICS | source_metrics() | {"up"}
    used: set[str] = set()
    for p in panels:
        assert p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p["targets"]:
            names = promql_metrics(t["expr"])
            assert names and not names - known, (p["title"], names - known)
            used |= names
    for needed in ("ccs_ingest_received_total", "ccs_ingest_committed_total", "ccs_ingest_backlog",
                   "ccs_ingest_commit_lag_seconds", "ccs_ingest_batch_seconds_bucket",
                   "ccs_ingest_dead_letters_total", "ccs_alerts_opened_total",
                   "ccs_delivery_failed_total", "up"):
        assert needed in used, needed
