"""deploy/k8s manifests against the code: every document loads; images, settings names, probe paths and
ports, commands, KEDA queue names and GPU limits agree with what the code defines.

No cluster here: these are static checks (see deploy/README.md for what was not verified).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from producers.contract import ALL_QUEUES, SIDE_SUFFIX, side_lane
from tests.deploy.support import (
    DEPLOY,
    METRICS,
    check_fakesake_argv,
    dockerfile_stages,
    project_version,
    unknown_settings,
)
from worker.service.health import ROUTES
from worker.service.settings import WorkerSettings

K8S = DEPLOY / "k8s"
NAMESPACE = "fakesake"
WORKERS = {"fakesake-worker-gpu": "worker-cuda", "fakesake-worker-cpu": "worker-cpu"}
PROBE_KIND = {"readinessProbe": "ready", "livenessProbe": "live", "startupProbe": "live"}

Doc = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _load_all() -> list[tuple[Path, Doc]]:
    docs = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _load_all()


def _kind(kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == kind}


def _containers(doc: Doc) -> list[Doc]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def _pod_labels(doc: Doc) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[f"{p.name}:{d.get('kind')}" for p, d in DOCS])
def test_every_document_is_a_namespaced_object(path: Path, doc: Doc) -> None:
    assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']} namespace"


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["namespace"] == NAMESPACE
    listed = set(kust["resources"])
    optional = {"servicemonitor.yaml"}  # needs the Prometheus Operator CRDs
    assert listed == {p.name for p in _manifest_files()} - optional
    assert {i["name"] for i in kust["images"]} == {f"fakesake/{t}" for t in (*WORKERS.values(), "api")}
    assert all(i["newTag"] == project_version() for i in kust["images"])


@pytest.mark.parametrize(("name", "target"), WORKERS.items())
def test_worker_images_are_dockerfile_targets_at_the_project_version(name: str, target: str) -> None:
    assert target in dockerfile_stages()
    (container,) = _containers(_kind("Deployment")[name])
    assert container["image"] == f"fakesake/{target}:{project_version()}"


def _env_names(container: Doc) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_every_fakesake_variable_is_a_real_setting() -> None:
    names: set[str] = set()
    for cm in _kind("ConfigMap").values():
        names |= set(cm.get("data", {}))
    for secret in _kind("Secret").values():
        names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for dep in _kind("Deployment").values():
        for c in _containers(dep):
            names |= set(_env_names(c))
    assert len([n for n in names if n.startswith("FAKESAKE_")]) >= 5
    assert unknown_settings(names) == []


def test_config_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _kind("ConfigMap")["fakesake-config"]["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, str(value))
    settings = WorkerSettings()
    assert settings.metrics.port == METRICS.port and settings.metrics.health_port == METRICS.health_port


def test_env_sources_exist() -> None:
    configmaps, secrets = _kind("ConfigMap"), _kind("Secret")
    for dep in [*_kind("Deployment").values(), *_kind("StatefulSet").values()]:
        for c in _containers(dep):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secrets
            defined: list[str] = []
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], ref
                for var in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert var in defined, f"{e['name']} uses $({var}) before it is defined"
                defined.append(e["name"])
            for var in re.findall(r"\$\((\w+)\)", " ".join(c.get("args", []))):
                assert var in _env_names(c), f"args use $({var}), not in env"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_command_is_one_threads_pool_process(name: str) -> None:
    (container,) = _containers(_kind("Deployment")[name])
    assert "command" not in container, "keep the image's ENTRYPOINT (fakesake)"
    args = check_fakesake_argv(container["args"])
    assert args is not None and args.command == "worker"
    assert "--pool=threads" in args.celery_args


@pytest.mark.parametrize("name", WORKERS)
def test_probes_hit_the_health_server_on_the_settings_ports(name: str) -> None:
    dep = _kind("Deployment")[name]
    (container,) = _containers(dep)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS.port, "health": METRICS.health_port}
    for probe_name, kind in PROBE_KIND.items():
        probe = container[probe_name]
        if "exec" in probe:
            command = probe["exec"]["command"]
            assert command[0] == "fakesake"
            check_fakesake_argv(command[1:])
            continue
        get = probe["httpGet"]
        assert ROUTES.get(get["path"]) == kind, f"{probe_name} -> {get['path']}"
        assert ports.get(get["port"], get["port"]) == METRICS.health_port
    # Liveness gives a stale heartbeat time to be noticed, never less than the server's own max age.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= METRICS.heartbeat_max_age_s


@pytest.mark.parametrize("name", WORKERS)
def test_shutdown_leaves_time_for_in_flight_jobs(name: str) -> None:
    spec = _kind("Deployment")[name]["spec"]["template"]["spec"]
    (container,) = _containers(_kind("Deployment")[name])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    fetch_deadline = WorkerSettings().fetch.total_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= pause + fetch_deadline + 30


@pytest.mark.parametrize("name", WORKERS)
def test_workers_run_as_non_root_with_a_writable_tmp(name: str) -> None:
    spec = _kind("Deployment")[name]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    (container,) = _containers(_kind("Deployment")[name])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    heartbeat_dir = str(Path(_kind("ConfigMap")["fakesake-config"]["data"]["FAKESAKE_METRICS__HEARTBEAT_FILE"]).parent)
    assert heartbeat_dir in mounts, "the heartbeat file needs a writable mount (read-only root filesystem)"
    assert "/models" in mounts


def test_gpu_worker_limits_and_tolerations() -> None:
    gpu = _kind("Deployment")["fakesake-worker-gpu"]
    (container,) = _containers(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "FAKESAKE_MODEL__DEVICE", "value": "cuda"} in container["env"]
    tolerations = gpu["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    cpu = _kind("Deployment")["fakesake-worker-cpu"]
    (cpu_container,) = _containers(cpu)
    assert "nvidia.com/gpu" not in str(cpu_container["resources"])
    assert {"name": "FAKESAKE_MODEL__DEVICE", "value": "cpu"} in cpu_container["env"]


def test_keda_scales_each_worker_on_both_lanes() -> None:
    scaled = _kind("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == set(WORKERS)
    redis_svc = _kind("Service")["redis"]
    redis_address = f"redis.{NAMESPACE}.svc.cluster.local:{redis_svc['spec']['ports'][0]['port']}"
    auths = _kind("TriggerAuthentication")
    for name, obj in scaled.items():
        triggers = obj["spec"]["triggers"]
        assert all(t["type"] == "redis" for t in triggers)
        lanes = [t for t in triggers if not t["metadata"]["listName"].endswith(SIDE_SUFFIX)]
        assert sorted(t["metadata"]["listName"] for t in lanes) == sorted(ALL_QUEUES), name
        # A pool that scales to zero wakes on its side lanes too (follow-ups must not strand); a warm one needs none.
        sides = [t for t in triggers if t not in lanes]
        expected = sorted(side_lane(q) for q in ALL_QUEUES) if obj["spec"]["minReplicaCount"] == 0 else []
        assert sorted(t["metadata"]["listName"] for t in sides) == expected, name
        assert all(t["metadata"]["activationListLength"] == "0" for t in sides), name  # any follow-up wakes it
        for t in triggers:
            assert t["metadata"]["address"] == redis_address
            assert int(t["metadata"]["listLength"]) > 0
            auth = auths[t["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["key"] in _kind("Secret")[ref["name"]]["stringData"]


def test_worker_redis_url_points_at_the_redis_service() -> None:
    for name in WORKERS:
        (container,) = _containers(_kind("Deployment")[name])
        url = next(e["value"] for e in container["env"] if e["name"] == "FAKESAKE_REDIS__URL")
        assert f"@redis.{NAMESPACE}.svc.cluster.local:6379/" in url


def test_redis_persists_with_aof_and_never_evicts() -> None:
    (redis,) = _containers(_kind("StatefulSet")["redis"])
    args = " ".join(redis["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert _kind("StatefulSet")["redis"]["spec"]["volumeClaimTemplates"]


def test_pdbs_and_metrics_service_select_the_workers() -> None:
    deployments = _kind("Deployment")
    for name in WORKERS:
        labels = _pod_labels(deployments[name])
        pdbs = [
            p for p in _kind("PodDisruptionBudget").values() if _selects(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(pdbs) == 1 and "minAvailable" not in pdbs[0]["spec"], name
        svc = _kind("Service")["fakesake-worker-metrics"]
        assert _selects(svc["spec"]["selector"], labels)
    port = _kind("Service")["fakesake-worker-metrics"]["spec"]["ports"][0]
    assert port["port"] == METRICS.port and port["targetPort"] == "metrics"
    monitor = _kind("ServiceMonitor")["fakesake-workers"]
    assert _selects(
        monitor["spec"]["selector"]["matchLabels"],
        _kind("Service")["fakesake-worker-metrics"]["metadata"]["labels"],
    )
