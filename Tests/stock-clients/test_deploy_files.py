"""The deployment files (issue 11, points 4 and 5) as a new operator would use them: the Kubernetes
manifests parse and agree with each other and with deploy/haproxy/, HAProxy accepts the
configuration with the Kubernetes settings, and the placement simulation's figures hold their
promises (every tenant placed once, the map's balance, what adding a server moves).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SUBPROCESS_TIMEOUT

K8S = REPO / "deploy" / "kubernetes"


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_kubernetes_manifests_agree():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    generated = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    assert generated == {"haproxy.cfg", "tenants.map"}
    namespace = kustomization["namespace"]

    servers = _documents("tenantd.yaml")
    service = _kind(servers, "Service")
    stateful = _kind(servers, "StatefulSet")
    # A headless Service names each server; one volume per server.
    assert service["spec"]["clusterIP"] == "None"
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    claims = stateful["spec"]["volumeClaimTemplates"]
    assert len(claims) == 1 and claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    container = stateful["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--data-dir="))
    assert mounts[claims[0]["metadata"]["name"]] == data_dir
    tls_port = int(next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--tls-port=")))
    assert tls_port in {p["containerPort"] for p in container["ports"]}
    assert {e["name"] for e in container["env"]} >= {"TENANT_DOMAIN", "TENANT_ADMIN_TOKEN"}

    proxies = _documents("haproxy.yaml")
    deployment = _kind(proxies, "Deployment")
    proxy = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in proxy["env"]}
    # HAProxy's backends are the StatefulSet's pods, by their stable names, on the TLS port.
    replicas = stateful["spec"]["replicas"]
    for ordinal in range(replicas):
        assert env[f"TENANTD_S{ordinal + 1}"] == (
            f"tenantd-{ordinal}.{service['metadata']['name']}.{namespace}.svc.cluster.local:{tls_port}")
    domain = next(e["value"] for e in container["env"] if e["name"] == "TENANT_DOMAIN")
    assert env["TENANT_DOMAIN"] == domain
    assert env["HAPROXY_TENANTS_MAP"].startswith(proxy["volumeMounts"][0]["mountPath"] + "/")
    # The map's backends all exist in the configuration.
    config = (K8S / "haproxy.cfg").read_text()
    for line in (K8S / "tenants.map").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert f"backend {line.split()[1]}\n" in config, line


def test_the_kubernetes_haproxy_cfg_is_the_tested_one():
    assert (K8S / "haproxy.cfg").read_bytes() == (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_bytes()


def test_haproxy_accepts_the_configuration_with_the_kubernetes_settings(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (apt-get install haproxy)")
    proxy = _kind(_documents("haproxy.yaml"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTD_", "HAPROXY_"))}
    env.update({e["name"]: e["value"] for e in proxy["env"]})
    env["HAPROXY_TENANTS_MAP"] = str(K8S / "tenants.map")
    done = subprocess.run(["haproxy", "-c", "-f", str(K8S / "haproxy.cfg")], env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_placement_simulation_keeps_its_promises():
    done = subprocess.run([str(K8S / "simulate-placement"), "--tenants", "20000", "--servers", "8", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    total = result["total_bytes"]
    for name, placement in result["placements"].items():
        assert sum(placement["tenants_per_server"]) == 20000, name
        assert abs(sum(placement["bytes_per_server"]) - total) <= 1e-6 * total, name
    by_hash = result["placements"]["hash of the subdomain"]
    by_map = result["placements"]["map, least data at sign-up"]
    assert by_map["max_over_mean_bytes"] < by_hash["max_over_mean_bytes"]
    rebalanced = next(p for n, p in result["placements"].items() if n.startswith("hash, then"))
    target = result["rebalance"]["target"]
    # A few migrations bring the hash placement within the target (its largest tenant is far
    # smaller than a server here, so the greedy rebalancer always finds one that fits).
    assert rebalanced["max_over_mean_bytes"] <= target < by_hash["max_over_mean_bytes"]
    assert 0 < result["rebalance"]["migrations"] <= 20
    grow = result["add_a_server"]
    # The map moves a handful of tenants but about a ninth of the data to a ninth server...
    assert grow["map_tenants_moved"] < 0.01 and grow["map_max_over_mean_bytes"] <= target
    assert 0.5 / 9 < grow["map_bytes_moved"] < 2 / 9
    # ...where hash mod N moves most tenants, and a ring about a ninth of them.
    assert grow["hash_mod_n_tenants_moved"] > 0.8
    assert 0.5 / 9 < grow["ring_tenants_moved"] < 2 / 9
