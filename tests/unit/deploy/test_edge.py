"""The edge proxy's deployment (HAProxy in front of ingest: deploy/edge, ADR 9), offline:
its configuration's Kubernetes copy (byte-equal to deploy/edge), the sidecar in each
ingest pod, the compose service, the scrape jobs, the timeout budget, and the HAProxy
metric names the alert rules and dashboards use, checked against what HAProxy's own
exporter serves.

Needs ``haproxy`` (2.6, Debian's package; deploy/local/test installs it) on PATH: a missing one
fails these tests, as a missing promtool fails test_deploy.py.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from .test_deploy import (
    DASHBOARDS,
    DEPLOY,
    K8S,
    OPERATIONS,
    PROM,
    TARGET_LABELS,
    base_resources,
    compose,
    kustomization,
    load_yaml,
    rules,
)

EDGE = DEPLOY / "edge"
CONFIG = EDGE / "haproxy.cfg"
K8S_EDGE = K8S / "base" / "edge"
COMPOSE_DIR = DEPLOY / "compose"
PROVIDER_WINDOW_S = 10.0  # a provider gives a try this long (docs/guarantees.md)

_SETTING = re.compile(r"\$\{(HOOKSTREAM_EDGE_[A-Z_]+)-([^}]*)\}")
_HAPROXY_SELECTOR = re.compile(r"\b(haproxy_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
_EQUALS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.fail("haproxy is not on PATH: install Debian's `haproxy` package "
                    "(apt-get install --no-install-recommends haproxy)")
    return path


def edge_settings() -> dict[str, str]:
    """HOOKSTREAM_EDGE_* variable -> its default, as haproxy.cfg reads it."""
    found: dict[str, str] = {}
    for name, default in _SETTING.findall(CONFIG.read_text()):
        assert found.setdefault(name, default) == default, f"{name}: two defaults"
    return found


def seconds(value: str) -> float:
    """An HAProxy time ("3s", "1500ms", "2m"; a bare number is milliseconds)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", value.strip().strip('"'))
    assert match, f"not an HAProxy time: {value!r}"
    unit = {"us": 1e-6, None: 1e-3, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
            "d": 86400.0}[match.group(2)]
    return float(match.group(1)) * unit


def timeout(name: str, environ: dict[str, str]) -> float:
    """A `timeout <name>` of the defaults section, its variable taken from ``environ``."""
    match = re.search(rf"^\s*timeout {name}\s+(\S+)", CONFIG.read_text(), re.M)
    assert match, f"haproxy.cfg has no timeout {name}"
    value = _SETTING.sub(lambda m: environ.get(m.group(1), m.group(2)), match.group(1))
    return seconds(value)


def _ingest_pod() -> dict[str, Any]:
    (sts,) = [d for d in base_resources()
              if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "hookstream-ingest"]
    return sts["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


# ================================================================== the configuration
def test_the_header_documents_every_setting_with_its_default() -> None:
    settings = edge_settings()
    assert set(settings) == {"HOOKSTREAM_EDGE_BIND", "HOOKSTREAM_EDGE_INGEST",
                             "HOOKSTREAM_EDGE_INGEST_MAXCONN", "HOOKSTREAM_EDGE_QUEUE_S",
                             "HOOKSTREAM_EDGE_ERRORS", "HOOKSTREAM_EDGE_STATS"}
    header = CONFIG.read_text()
    operations = OPERATIONS.read_text()
    for name, default in settings.items():
        assert re.search(rf"^#\s+{name}\s.*\[{re.escape(default)}\]$", header, re.M), name
        assert re.search(rf"`{name}`.*`{re.escape(default)}`", operations), (
            f"docs/operations.md (Edge proxy) does not give {name} with its default")


def test_the_kubernetes_copy_is_byte_equal_to_deploy_edge() -> None:
    """kustomize reads no file outside deploy/k8s/base: it generates the ConfigMap from a
    copy, which must not drift from the configuration the fault suite runs."""
    files = sorted(p.relative_to(EDGE) for p in EDGE.rglob("*") if p.is_file())
    copies = sorted(p.relative_to(K8S_EDGE) for p in K8S_EDGE.rglob("*") if p.is_file())
    assert files == copies
    for name in files:
        assert (EDGE / name).read_bytes() == (K8S_EDGE / name).read_bytes(), (
            f"deploy/k8s/base/edge/{name} differs: cp deploy/edge/{name} "
            f"deploy/k8s/base/edge/{name}")
    (generator,) = [g for g in kustomization(K8S / "base")["configMapGenerator"]
                    if g["name"] == "hookstream-edge"]
    assert sorted(generator["files"]) == sorted(f"edge/{name}" for name in files)


def test_the_configuration_is_valid() -> None:
    result = subprocess.run(
        [_haproxy(), "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=60,
        check=False, env={**os.environ, "HOOKSTREAM_EDGE_ERRORS": str(EDGE / "errors")})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_error_answers_are_503_with_retry_after() -> None:
    for path in sorted((EDGE / "errors").glob("*.http")):
        head, _, body = path.read_bytes().partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 503 Service Unavailable", path.name
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert int(headers["retry-after"]) > 0, path.name
        assert int(headers["content-length"]) == len(body), path.name
        json.loads(body)


# ================================================================== Kubernetes
def test_each_ingest_pod_runs_the_edge_proxy_in_front_of_ingest() -> None:
    pod = _ingest_pod()
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"ingest", "edge"}
    ingest, edge = containers["ingest"], containers["edge"]
    # The image: named in the manifest, pinned in the kustomization (as hookstream's).
    assert edge["image"] == "haproxy"
    images = {i["name"]: i for i in kustomization(K8S / "base")["images"]}
    assert images["haproxy"]["newTag"] == "2.6"
    env, ingest_env = _env(edge), _env(ingest)
    assert set(env) == set(edge_settings()), "every setting explicit on the sidecar"
    ports = {p["name"]: p["containerPort"] for p in edge["ports"]}
    assert env["HOOKSTREAM_EDGE_BIND"] == f"0.0.0.0:{ports['http']}" == "0.0.0.0:8443"
    assert env["HOOKSTREAM_EDGE_STATS"] == f"0.0.0.0:{ports['edge-stats']}"
    # Ingest on the pod's loopback only, where the edge sends the requests.
    assert ingest_env["HOOKSTREAM_INGEST_HOST"] == "127.0.0.1"
    assert env["HOOKSTREAM_EDGE_INGEST"] == f"127.0.0.1:{ingest_env['HOOKSTREAM_INGEST_PORT']}"
    assert not {p["containerPort"] for p in ingest["ports"]} & {
        int(ingest_env["HOOKSTREAM_INGEST_PORT"])}
    # The budget: queue + ingest's answer inside the window, the server timeout behind
    # ingest's own deadline and, added to the queue, still inside the window.
    queue = timeout("queue", env)
    answer = float(ingest_env["HOOKSTREAM_INGEST_ANSWER_WITHIN_S"])
    server = timeout("server", env)
    assert answer < server and queue + server < PROVIDER_WINDOW_S, (queue, answer, server)
    # The files: the generated ConfigMap, mounted where the command and the errors
    # setting point.
    (mount,) = edge["volumeMounts"]
    assert mount["readOnly"] is True
    assert edge["command"] == ["haproxy", "-db", "-f", f"{mount['mountPath']}/haproxy.cfg"]
    assert env["HOOKSTREAM_EDGE_ERRORS"] == f"{mount['mountPath']}/errors"
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["configMap"]
    assert volume["name"] == "hookstream-edge"
    assert {i["key"]: i["path"] for i in volume["items"]} == {
        p.name: str(p.relative_to(EDGE)) for p in EDGE.rglob("*") if p.is_file()}
    # Hardened as the other containers; probes on its /healthz.
    security = edge["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(edge["resources"][bound])
    assert re.search(r"^\s*monitor-uri /healthz$", CONFIG.read_text(), re.M)
    for probe in ("livenessProbe", "readinessProbe"):
        assert edge[probe]["httpGet"] == {"path": "/healthz", "port": "edge-stats"}, probe
    assert edge["lifecycle"] == ingest["lifecycle"], "both wait out the endpoint removal"


def test_the_services_target_the_edge() -> None:
    services = {d["metadata"]["name"]: d for d in base_resources() if d["kind"] == "Service"}
    edge = next(c for c in _ingest_pod()["containers"] if c["name"] == "edge")
    named = {p["name"] for p in edge["ports"]}
    for name in ("hookstream-ingest", "hookstream-ingest-headless"):
        for port in services[name]["spec"]["ports"]:
            assert port["targetPort"] in named, f"{name}: {port} is not the edge's"


# ================================================================== compose
def test_compose_runs_the_edge_in_front_of_ingest() -> None:
    services = compose()["services"]
    edge, ingest = services["edge"], services["ingest"]
    assert edge["image"] == "${HAPROXY_IMAGE:-haproxy:2.6}"
    env = edge["environment"]
    assert set(env) == set(edge_settings())
    assert env["HOOKSTREAM_EDGE_INGEST"] == (
        f"ingest:{ingest['environment']['HOOKSTREAM_INGEST_PORT']}")
    assert edge["depends_on"]["ingest"]["condition"] == "service_healthy"
    bind = env["HOOKSTREAM_EDGE_BIND"].rsplit(":", 1)[1]
    assert [str(p).rsplit(":", 1)[-1] for p in edge["ports"]] == [bind]
    (volume,) = edge["volumes"]
    source, target, mode = volume.split(":")
    assert (COMPOSE_DIR / source).resolve() == EDGE and mode == "ro"
    assert edge["command"] == ["haproxy", "-db", "-f", f"{target}/haproxy.cfg"]
    assert env["HOOKSTREAM_EDGE_ERRORS"] == f"{target}/errors"
    answer = float(ingest["environment"]["HOOKSTREAM_INGEST_ANSWER_WITHIN_S"])
    assert timeout("queue", env) + answer < PROVIDER_WINDOW_S


# ================================================================== Prometheus
def test_prometheus_scrapes_the_edge_as_its_own_job() -> None:
    jobs = {j["job_name"]: j for j in load_yaml(PROM / "prometheus.k8s.yml")["scrape_configs"]}
    keeps = {tuple(r["source_labels"]): r["regex"] for r in jobs["hookstream-edge"]
             ["relabel_configs"] if r.get("action") == "keep"}
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "edge-stats"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)] == "hookstream"
    jobs = {j["job_name"]: j for j in load_yaml(PROM / "prometheus.compose.yml")
            ["scrape_configs"]}
    stats = compose()["services"]["edge"]["environment"]["HOOKSTREAM_EDGE_STATS"]
    assert jobs["hookstream-edge"]["static_configs"] == [
        {"targets": [f"edge:{stats.rsplit(':', 1)[1]}"]}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def exporter_series() -> dict[str, dict[str, set[str]]]:
    """What HAProxy's exporter serves for this configuration: metric -> label -> values."""
    stats = _free_port()
    environ = {**os.environ, "HOOKSTREAM_EDGE_BIND": f"127.0.0.1:{_free_port()}",
               "HOOKSTREAM_EDGE_INGEST": f"127.0.0.1:{_free_port()}",
               "HOOKSTREAM_EDGE_STATS": f"127.0.0.1:{stats}",
               "HOOKSTREAM_EDGE_ERRORS": str(EDGE / "errors")}
    process = subprocess.Popen([_haproxy(), "-db", "-f", str(CONFIG)], env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{stats}/metrics",
                                            timeout=2) as answer:
                    text = answer.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
    series: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"([a-z_:][a-z0-9_:]*)(?:\{([^}]*)\})? ", line)
        if not match:
            continue
        labels = series.setdefault(match.group(1), {})
        for label, value in re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""):
            labels.setdefault(label, set()).add(value)
    return series


def haproxy_queries() -> list[tuple[str, str]]:
    """(where, expression) of every rule and dashboard query naming an haproxy_ metric."""
    found = [(f"rule {r.get('alert') or r.get('record')}", r["expr"])
             for g in rules()["groups"] for r in g["rules"]]
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']!r}", target["expr"]))
    return [(where, expr) for where, expr in found if "haproxy_" in expr]


def test_rules_and_dashboards_use_only_metrics_the_edge_exports() -> None:
    series = exporter_series()
    assert "haproxy_backend_current_queue" in series, "the exporter answered nothing useful"
    queries = haproxy_queries()
    assert queries, "no rule or panel watches the edge"
    problems = []
    for where, expr in queries:
        for name, matchers in _HAPROXY_SELECTOR.findall(expr):
            if name not in series:
                problems.append(f"{where}: HAProxy 2.6 exports no {name}")
                continue
            for label, op, value in _EQUALS.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                if label not in series[name]:
                    problems.append(f"{where}: {name} has no label {label!r}")
                elif op == "=" and value not in series[name][label]:
                    problems.append(f"{where}: {name}{{{label}={value!r}}} is never "
                                    f"exported (only {sorted(series[name][label])})")
    assert problems == []


def test_the_edge_panels_and_alert_exist() -> None:
    rows = [p["title"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]
            if p["type"] == "row"]
    assert "Edge proxy" in rows
    names = {r.get("alert") for g in rules()["groups"] for r in g["rules"]}
    assert "HookstreamEdgeShedding" in names


def test_the_exporter_series_helper_reads_labels() -> None:
    """A guard on the parser above: the queue gauge and the responses' codes."""
    series = exporter_series()
    assert series["haproxy_backend_http_responses_total"]["code"] >= {"2xx", "5xx"}
    assert "ingest" in series["haproxy_backend_current_queue"]["proxy"]
