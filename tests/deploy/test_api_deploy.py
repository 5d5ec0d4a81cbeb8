"""The HTTP API's deploy files against the code: the torch-free image, the Compose service, the Kubernetes
Deployment, Service and HPA."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.support import (
    DEPLOY,
    check_fakesake_argv,
    dockerfile_stages,
    effective,
    exec_form,
    image_entrypoint,
    load_yaml,
    project_version,
)


def _k8s() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "api.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_api_image_is_the_producer_venv_plus_the_api_extra_without_torch() -> None:
    stages = dockerfile_stages()
    assert stages["api-build"].base == "producer-build"
    (install,) = [run for run in stages["api-build"].get("RUN") if "pip install" in run]
    assert '"/src[api]"' in install and 'import torch"' in install
    assert [c for c in stages["api"].get("COPY") if "/opt/venv" in c] == ["--from=api-build /opt/venv /opt/venv"]
    assert effective("api", "USER") == "10001:10001"
    cmd = exec_form(effective("api", "CMD") or "[]")
    args = check_fakesake_argv(cmd)
    assert image_entrypoint("api") == ["fakesake"] and args is not None and args.command == "api"
    assert f"EXPOSE {args.port}" in [f"EXPOSE {v}" for v in stages["api"].get("EXPOSE")]


def test_compose_api_service_runs_fakesake_api_on_its_published_port() -> None:
    svc = load_yaml(DEPLOY / "compose.yaml")["services"]["api"]
    assert svc["build"]["target"] == "api" and svc["image"] == f"fakesake/api:${{IMAGE_TAG:-{project_version()}}}"
    args = check_fakesake_argv(svc["command"])
    assert args is not None and svc["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    assert svc["environment"]["FAKESAKE_REDIS__URL"] == "redis://redis:6379/0"


def test_k8s_deployment_service_and_hpa_fit_together() -> None:
    docs = _k8s()
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"fakesake/api:{project_version()}"
    args = check_fakesake_argv(container["args"])
    assert args is not None and args.command == "api"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert labels["app.kubernetes.io/component"] == "api"  # never selected by the workers' PDBs or scalers
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and container["resources"]["requests"]["cpu"]
