"""The Sentinel deploy examples (deploy/compose.sentinel.yaml, deploy/k8s-sentinel/) against the code: settings
names are real, the Redis URL parses as the Sentinel group the files start, and one group name is used throughout.

Static checks, like tests/deploy/test_k8s.py; the overlay is also rendered with ``kubectl kustomize`` where
kubectl is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from producers.redis_url import parse_sentinel_url
from producers.settings import RedisSettings
from tests.deploy.support import DEPLOY, REPO, load_yaml, unknown_settings

OVERLAY = DEPLOY / "k8s-sentinel"
COMPOSE = DEPLOY / "compose.sentinel.yaml"
_MONITOR = re.compile(r"sentinel monitor (\S+) (\S+) 6379 (\d+)")


def _overlay_docs() -> dict[str, list[Any]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in OVERLAY.glob("*.yaml")}


def test_compose_override_points_every_fakesake_service_at_the_sentinels() -> None:
    override = load_yaml(COMPOSE)
    base = load_yaml(DEPLOY / "compose.yaml")["services"]
    services = override["services"]
    assert set(services) - {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(base)
    sentinels = [n for n in services if n.startswith("sentinel-")]
    monitor = _MONITOR.search(services["sentinel-1"]["command"][0])
    assert monitor is not None
    for name in ("worker-gpu", "worker-cpu", "producer", "api"):
        env = services[name]["environment"]
        assert not unknown_settings(env)
        settings = RedisSettings(url=env["FAKESAKE_REDIS__URL"], master_name=env["FAKESAKE_REDIS__MASTER_NAME"])
        target = parse_sentinel_url(settings.url)
        assert sorted(h for h, _ in target.sentinels) == sorted(sentinels)
        assert settings.master_name == monitor.group(1)
    assert monitor.group(2) == "redis" and int(monitor.group(3)) == len(sentinels) // 2 + 1
    assert "--replicaof" in services["redis-replica"]["command"]


def test_k8s_overlay_lists_its_files_and_deletes_the_single_redis() -> None:
    kust = load_yaml(OVERLAY / "kustomization.yaml")
    used = {r for r in kust["resources"] if r.endswith(".yaml")} | {p["path"] for p in kust["patches"] if "path" in p}
    assert used == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert "../k8s" in kust["resources"]
    deleted = [yaml.safe_load(p["patch"]) for p in kust["patches"] if "$patch: delete" in p.get("patch", "")]
    assert {(d["kind"], d["metadata"]["name"]) for d in deleted} == {("StatefulSet", "redis"), ("Service", "redis")}


def test_k8s_overlay_uses_one_group_everywhere() -> None:
    docs = _overlay_docs()
    kust = load_yaml(OVERLAY / "kustomization.yaml")
    config = next(yaml.safe_load(p["patch"]) for p in kust["patches"] if "ConfigMap" in p.get("patch", ""))
    master = config["data"]["FAKESAKE_REDIS__MASTER_NAME"]
    assert not unknown_settings(config["data"])
    ha = {d["kind"]: d for d in docs["redis-ha.yaml"]}
    scripts = ha["ConfigMap"]["data"]
    monitor = _MONITOR.search(scripts["sentinel.sh"])
    assert monitor is not None and monitor.group(1) == master
    assert f"get-master-addr-by-name {master}" in scripts["primary.sh"]
    pods = [f"redis-ha-{i}.redis-ha.fakesake.svc.cluster.local" for i in range(ha["StatefulSet"]["spec"]["replicas"])]
    assert int(monitor.group(3)) == len(pods) // 2 + 1
    for name in ("workers.yaml", "api.yaml"):
        (deployment,) = docs[name]
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert next(iter(env)) == "REDIS_PASSWORD"  # $(REDIS_PASSWORD) expands only after it
        assert not unknown_settings(env)
        url = env["FAKESAKE_REDIS__URL"]["value"].replace("$(REDIS_PASSWORD)", "pw")
        target = parse_sentinel_url(RedisSettings(url=url, master_name=master).url)
        assert [h for h, _ in target.sentinels] == pods and target.password == "pw"
    for op in docs["keda.yaml"][0] + docs["keda-cpu.yaml"][0]:
        if op["path"].endswith("/addresses"):
            assert op["value"].split(",") == [f"{p}:26379" for p in pods]
        if op["path"].endswith("/sentinelMaster"):
            assert op["value"] == master


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the overlay; not installed")
def test_k8s_overlay_renders() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY.relative_to(REPO))], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "redis-ha") in names and ("StatefulSet", "redis") not in names
    for d in docs:
        if d["kind"] == "ScaledObject":
            assert {t["type"] for t in d["spec"]["triggers"]} == {"redis-sentinel"}
        if d["kind"] == "Deployment":
            env = {e["name"] for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
            assert "FAKESAKE_REDIS__URL" in env and "FAKESAKE_REDIS__SENTINEL_PASSWORD" in env


def test_k8s_overlay_patches_every_keda_trigger_it_has() -> None:
    """Each ScaledObject trigger of ../k8s gets the four ops (type, address out, addresses, sentinelMaster)."""
    base = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "keda.yaml").read_text()) if d["kind"] == "ScaledObject"]
    kust = load_yaml(OVERLAY / "kustomization.yaml")
    docs = _overlay_docs()
    for obj in base:
        patched: list[str] = []
        for p in kust["patches"]:
            target = p.get("target", {})
            if p.get("path", "").startswith("keda") and re.fullmatch(target.get("name", ".*"), obj["metadata"]["name"]):
                patched += [op["path"] for op in docs[p["path"]][0]]
        for i in range(len(obj["spec"]["triggers"])):
            ops = sorted(path for path in patched if path.startswith(f"/spec/triggers/{i}/"))
            assert ops == [
                f"/spec/triggers/{i}/{leaf}"
                for leaf in ("metadata/address", "metadata/addresses", "metadata/sentinelMaster", "type")
            ], (obj["metadata"]["name"], i)


def test_docs_name_the_examples() -> None:
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    for path in (COMPOSE, OVERLAY):
        assert Path(path).relative_to(REPO).as_posix() in text
