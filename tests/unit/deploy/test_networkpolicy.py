"""The NetworkPolicies of deploy/k8s (offline; schema validation of every manifest is
in test_deploy.py). Egress: every hookstream pod is under an egress policy, and the
recordings sink, which fetches URLs taken from webhook payloads, may reach DNS, Kafka,
PostgreSQL and public HTTPS only, never the cloud metadata range. Ingress: every
hookstream pod is under an ingress policy; ingest's webhook port (its edge proxy's) is
open to anyone, each pod's admin port (probes, /readyz, /metrics; and the edge's
/metrics) only to the monitoring namespace, and nothing else is reachable, in the base
and in the rendered local overlay."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_deploy import K8S, REPO, base_resources, kustomization, load_yaml_all, validate_k8s

RECORDINGS = "hookstream-sink-recordings"
TRANSCRIPTS = "hookstream-sink-transcripts"
METADATA = ipaddress.ip_address("169.254.169.254")
NOT_PUBLIC = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
              "127.0.0.0/8"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        operator = expr["operator"]
        if operator == "In" and value not in expr["values"]:
            return False
        if operator == "NotIn" and value in expr["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


WORKLOADS = ("Deployment", "StatefulSet")  # ingest is a StatefulSet (its spool volumes)


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Workload name -> its pods' labels (Deployments, StatefulSets and Jobs)."""
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in (*WORKLOADS, "Job")}


def egress_rules(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for policy in _policies(docs):
        spec = policy["spec"]
        if "Egress" in spec.get("policyTypes", []) and _selects(spec["podSelector"], labels):
            rules.extend(spec.get("egress", []))
    return rules


def ingress_rules(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """The ingress rules of every policy selecting the pod; [] for a selected pod that
    may be reached on nothing (check ingress_isolated first)."""
    rules: list[dict[str, Any]] = []
    for policy in _policies(docs):
        spec = policy["spec"]
        if "Ingress" in spec.get("policyTypes", []) and _selects(spec["podSelector"], labels):
            rules.extend(spec.get("ingress") or [])
    return rules


def ingress_isolated(docs: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    return any("Ingress" in p["spec"].get("policyTypes", [])
               and _selects(p["spec"]["podSelector"], labels) for p in _policies(docs))


def _ports(rule: dict[str, Any], named: dict[str, int] | None = None
           ) -> set[tuple[str, int]]:
    """The rule's (protocol, port) pairs; a named port resolved through ``named`` (the
    pod's container ports), as the network plugin resolves it per pod."""
    return {(p.get("protocol", "TCP"), (named or {}).get(p["port"], p["port"]))
            for p in rule.get("ports", [])}


def test_the_policy_is_in_the_base_and_validates() -> None:
    assert "networkpolicy.yaml" in kustomization(K8S / "base")["resources"]
    docs = load_yaml_all(K8S / "base" / "networkpolicy.yaml")
    assert docs and all(d["kind"] == "NetworkPolicy" for d in docs)
    assert validate_k8s(docs, "networkpolicy.yaml") == []
    local = load_yaml_all(K8S / "overlays" / "local" / "networkpolicy-local.yaml")
    assert validate_k8s(local, "networkpolicy-local.yaml") == []
    assert "networkpolicy-local.yaml" in kustomization(K8S / "overlays" / "local")["resources"]


def test_every_hookstream_pod_is_under_an_egress_policy() -> None:
    docs = base_resources()
    pods = _pods(docs)
    assert RECORDINGS in pods and "hookstream-ingest" in pods and "hookstream-migrate" in pods
    for name, labels in pods.items():
        rules = egress_rules(docs, labels)
        assert rules, f"{name}: no egress policy selects it (egress unrestricted)"
        for rule in rules:
            assert rule.get("to"), f"{name}: an egress rule without destinations"
            assert rule.get("ports"), f"{name}: an egress rule without ports"
    ingest = {p for r in egress_rules(docs, pods["hookstream-ingest"]) for p in _ports(r)}
    assert ingest == {("UDP", 53), ("TCP", 53), ("TCP", 9092)}


@pytest.mark.parametrize("sink", [RECORDINGS, TRANSCRIPTS])
def test_the_fetching_sinks_reach_dns_kafka_postgres_and_public_https_only(sink: str) -> None:
    """The recordings and transcripts sinks fetch URLs taken from webhook payloads."""
    docs = base_resources()
    rules = egress_rules(docs, _pods(docs)[sink])
    ports = {p for r in rules for p in _ports(r)}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 5432), ("TCP", 443)}
    https = [r for r in rules if ("TCP", 443) in _ports(r)]
    assert len(https) == 1 and _ports(https[0]) == {("TCP", 443)}
    blocks = [peer["ipBlock"] for peer in https[0]["to"]]
    assert [set(peer) for peer in https[0]["to"]] == [{"ipBlock"}] * len(blocks)
    v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert set(NOT_PUBLIC) <= set(v4["except"])
    for block in blocks:
        network = ipaddress.ip_network(block["cidr"])
        excluded = [ipaddress.ip_network(e) for e in block.get("except", [])]
        # The metadata address (v4, and v6 fd00:ec2::254) is in no allowed range.
        for address in (METADATA, ipaddress.ip_address("fd00:ec2::254"),
                        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
                        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fe80::1")):
            if address.version == network.version and address in network:
                assert any(address in e for e in excluded), (block, address)
    # No other rule reaches the link-local range on any port: Kafka and PostgreSQL only
    # allow private ranges and cluster pods.
    for rule in rules:
        for peer in rule["to"]:
            if "ipBlock" in peer and rule is not https[0]:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert METADATA not in network or any(
                    METADATA in ipaddress.ip_network(e) for e in peer["ipBlock"]["except"])


# The webhooks come in on the edge proxy's port (a sidecar in each ingest pod); ingest
# itself listens on the pod's loopback.
WEBHOOK = ("TCP", 8443)
EDGE_STATS = ("TCP", 8405)  # the edge's /metrics, for Prometheus
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
# The admin ports networkpolicy.yaml and docs/operations.md name; checked against the
# Deployments (probes, scrape annotation) below.
ADMIN_PORTS = {"hookstream-ingest": 8079, "hookstream-normalizer": 8081,
               "hookstream-sink-warehouse": 8092, "hookstream-sink-alerts": 8093,
               "hookstream-sink-crm": 8094, "hookstream-sink-recordings": 8095,
               "hookstream-sink-transcripts": 8096}


def _local_overlay() -> list[dict[str, Any]]:
    """The local overlay rendered by kubectl kustomize, or without kubectl the base's
    resources plus the overlay's own policies (its patches touch no policy)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return [*base_resources(),
                *load_yaml_all(K8S / "overlays" / "local" / "networkpolicy-local.yaml")]
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / "local")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs
            if d["kind"] in WORKLOADS
            and d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "hookstream"}


def _container_ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])}


def _from_monitoring_only(peer: dict[str, Any]) -> bool:
    """The peer is pods of the monitoring namespace, and of no other namespace."""
    namespaces = peer.get("namespaceSelector")
    return ("ipBlock" not in peer and namespaces is not None
            and _selects(namespaces, MONITORING)
            and not _selects(namespaces, {"kubernetes.io/metadata.name": "hookstream"})
            and not _selects(namespaces, {"kubernetes.io/metadata.name": "default"}))


def test_the_admin_ports_are_the_deployments_probe_and_scrape_ports() -> None:
    """The admin port of each Deployment (ADMIN_PORTS) is where its probes and the
    Prometheus annotation point, and ingest's is not its public (Service) port."""
    deployments = _deployments(base_resources())
    assert set(deployments) == set(ADMIN_PORTS)
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        named = _container_ports(deployment)
        assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == ADMIN_PORTS[name]
        container = template["spec"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert named.get(port, port) == ADMIN_PORTS[name], (name, probe)
    ingest = _container_ports(deployments["hookstream-ingest"])
    assert ingest == {"http": WEBHOOK[1], "admin": ADMIN_PORTS["hookstream-ingest"],
                      "edge-stats": EDGE_STATS[1]}
    service = next(d for d in base_resources()
                   if d["kind"] == "Service" and d["metadata"]["name"] == "hookstream-ingest")
    assert [ingest[p["targetPort"]] for p in service["spec"]["ports"]] == [WEBHOOK[1]]


@pytest.mark.parametrize("where", ["base", "local overlay"])
def test_every_hookstream_pod_is_under_an_ingress_policy(where: str) -> None:
    docs = base_resources() if where == "base" else _local_overlay()
    pods = _pods(docs)
    hookstream = {n: labels for n, labels in pods.items()
                  if labels.get("app.kubernetes.io/part-of") == "hookstream"}
    assert set(ADMIN_PORTS) | {"hookstream-topics", "hookstream-migrate"} <= set(hookstream)
    for name, labels in hookstream.items():
        assert ingress_isolated(docs, labels), f"{where}: {name}: no ingress policy selects it"
        for rule in ingress_rules(docs, labels):
            # A rule without ports would open every port (and a peer-less one to anyone).
            assert rule.get("ports"), f"{where}: {name}: an ingress rule without ports"
    for job in ("hookstream-topics", "hookstream-migrate"):
        assert ingress_rules(docs, hookstream[job]) == [], f"{where}: {job} serves nothing"


@pytest.mark.parametrize("where", ["base", "local overlay"])
def test_admin_ports_only_from_monitoring_and_only_the_webhook_port_is_open(where: str) -> None:
    docs = base_resources() if where == "base" else _local_overlay()
    pods = _pods(docs)
    deployments = _deployments(docs)
    for name, admin in ADMIN_PORTS.items():
        rules = ingress_rules(docs, pods[name])
        named = _container_ports(deployments[name])
        open_ports = {p for r in rules if not r.get("from") for p in _ports(r, named)}
        monitoring = {p for r in rules if r.get("from") for p in _ports(r, named)}
        for rule in rules:
            for peer in rule.get("from") or []:
                assert _from_monitoring_only(peer), f"{where}: {name}: ingress from {peer}"
        # Anyone reaches ingest's webhook port and nothing else of any pod; the monitoring
        # namespace reaches each pod's admin port (and the edge's) and nothing else.
        ingest = name == "hookstream-ingest"
        assert open_ports == ({WEBHOOK} if ingest else set()), name
        assert monitoring == {("TCP", admin)} | ({EDGE_STATS} if ingest else set()), (
            f"{where}: {name}: {monitoring}")
        assert not monitoring & open_ports
    # A named port the pod does not declare would open nothing (or, resolved elsewhere,
    # something else): every port of every rule resolves to a number.
    for name in ADMIN_PORTS:
        named = _container_ports(deployments[name])
        for rule in ingress_rules(docs, pods[name]):
            assert all(isinstance(port, int) for _, port in _ports(rule, named)), name


DEMO = REPO / "deploy" / "local" / "demo"


def shipped_files() -> list[Path]:
    """Every deployment file but the local demo's script: the demo fetches recordings
    and transcripts from its loopback stand-in (tests/fakes/media.py), so it allows
    private addresses, as development may; checked below that it does only that."""
    return [p for p in (REPO / "deploy").rglob("*")
            if p.is_file() and p.suffix in (".yaml", ".yml", ".env", "") and p != DEMO]


def test_only_the_demo_allows_private_addresses_and_only_for_its_stand_in() -> None:
    text = DEMO.read_text()
    for kind in ("RECORDINGS", "TRANSCRIPTS"):
        assert f"HOOKSTREAM_{kind}_ALLOW_PRIVATE_ADDRESSES=true" in text
        assert f"HOOKSTREAM_{kind}_ALLOWED_HOSTS=127.0.0.1 " in text
    assert 'media="http://127.0.0.1:8098"' in text and "tests.fakes.media" in text


def test_the_shipped_configurations_allow_sarj_recording_host() -> None:
    """Empty means "refuse": every shipped configuration of the recordings sink names
    Sarj.ai's recording host, and none allows private addresses."""
    deployment = next(d for d in base_resources()
                      if d["kind"] == "Deployment" and d["metadata"]["name"] == RECORDINGS)
    env = {v["name"]: v.get("value") for v in
           deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert env["HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS"] == "storage.googleapis.com"
    local = load_yaml_all(K8S / "overlays" / "local" / "recordings-local.yaml")[0]
    env = {v["name"]: v.get("value") for v in
           local["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert env["HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS"] == "storage.googleapis.com"
    compose = yaml.safe_load((REPO / "deploy/compose/compose.yaml").read_text())
    service = compose["services"]["sink-recordings"]["environment"]
    assert service["HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS"] == "storage.googleapis.com"
    for text in shipped_files():
        assert "HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES" not in text.read_text(
            errors="replace"), text


def test_the_shipped_configurations_allow_saaya_api_host_only() -> None:
    """The transcripts sink: Saaya's API host in every shipped configuration, and no
    configuration allows private addresses."""
    deployment = next(d for d in base_resources()
                      if d["kind"] == "Deployment" and d["metadata"]["name"] == TRANSCRIPTS)
    env = {v["name"]: v.get("value") for v in
           deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert env["HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS"] == "api.saaya.ai"
    compose = yaml.safe_load((REPO / "deploy/compose/compose.yaml").read_text())
    service = compose["services"]["sink-transcripts"]["environment"]
    assert service["HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS"] == "api.saaya.ai"
    for text in shipped_files():
        assert "HOOKSTREAM_TRANSCRIPTS_ALLOW_PRIVATE_ADDRESSES" not in text.read_text(
            errors="replace"), text
