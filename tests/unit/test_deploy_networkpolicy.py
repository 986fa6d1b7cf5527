"""The egress NetworkPolicies of deploy/k8s (offline; schema validation of every
manifest is in test_deploy.py): every hookstream pod is under an egress policy, and
the recordings sink, which fetches URLs taken from webhook payloads, may reach DNS,
Kafka, PostgreSQL and public HTTPS only, never the cloud metadata range."""

from __future__ import annotations

import ipaddress
from typing import Any

from .test_deploy import K8S, REPO, base_resources, kustomization, load_yaml_all, validate_k8s

RECORDINGS = "hookstream-sink-recordings"
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


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Workload name -> its pods' labels (Deployments and Jobs)."""
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in ("Deployment", "Job")}


def egress_rules(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for policy in _policies(docs):
        spec = policy["spec"]
        if "Egress" in spec.get("policyTypes", []) and _selects(spec["podSelector"], labels):
            rules.extend(spec.get("egress", []))
    return rules


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


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


def test_the_recordings_sink_reaches_dns_kafka_postgres_and_public_https_only() -> None:
    docs = base_resources()
    rules = egress_rules(docs, _pods(docs)[RECORDINGS])
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
    import yaml

    compose = yaml.safe_load((REPO / "deploy/compose/compose.yaml").read_text())
    service = compose["services"]["sink-recordings"]["environment"]
    assert service["HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS"] == "storage.googleapis.com"
    for text in (REPO / "deploy").rglob("*"):
        if text.is_file() and text.suffix in (".yaml", ".yml", ".env", ""):
            assert "HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES" not in text.read_text(
                errors="replace"), text
