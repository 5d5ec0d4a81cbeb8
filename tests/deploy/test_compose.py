"""deploy/compose.yaml (and prometheus.yml, fakesake.env.example) against the code.

Docker is not available here, so the file is not run; these checks fail when the services, commands or
settings it names drift from the code.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    METRICS,
    REPO,
    check_fakesake_argv,
    dockerfile_stages,
    image_entrypoint,
    load_yaml,
    project_version,
    unknown_settings,
)

COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict) and "services" in doc
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services built from deploy/Dockerfile."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def _env(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return env


def test_our_services_build_real_targets_and_name_images_after_them(
    services: dict[str, dict[str, Any]],
) -> None:
    ours = _ours(services)
    assert {"worker-gpu", "worker-cpu", "producer"} <= set(ours)
    for name, svc in ours.items():
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        target = build["target"]
        assert target in dockerfile_stages(), f"{name}: no Dockerfile stage {target}"
        assert svc["image"] == f"fakesake/{target}:${{IMAGE_TAG:-{project_version()}}}"


def test_commands_are_real_fakesake_subcommands(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _ours(services).items():
        target = svc["build"]["target"]
        assert image_entrypoint(target) == ["fakesake"]
        assert isinstance(svc["command"], list), f"{name}: use the exec (list) form"
        check_fakesake_argv(svc["command"])
        health = svc.get("healthcheck", {}).get("test")
        if health:
            assert health[0] == "CMD" and health[1] == "fakesake", f"{name}: healthcheck {health}"
            check_fakesake_argv(health[2:])


def test_workers_run_one_threads_pool_process(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker-gpu", "worker-cpu"):
        args = check_fakesake_argv(services[name]["command"])
        assert args is not None and args.command == "worker"
        assert "--pool=threads" in args.celery_args, f"{name}: one process per device (threads pool)"


def test_every_fakesake_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    for svc in compose["services"].values():
        names |= set(_env(svc))
    names |= set(re.findall(r"\$\{(FAKESAKE_\w+)", COMPOSE.read_text()))  # interpolated too
    assert {n for n in names if n.startswith("FAKESAKE_")}, "compose sets no settings at all?"
    assert unknown_settings(names) == []


def test_env_example_names_real_settings() -> None:
    text = (DEPLOY / "fakesake.env.example").read_text()
    names = re.findall(r"^#?\s*(FAKESAKE_\w+)=", text, flags=re.MULTILINE)
    assert len(names) >= 5
    assert unknown_settings(names) == []


def test_no_empty_settings(compose: dict[str, Any]) -> None:
    # "" is a value for pydantic, not "unset": an empty FAKESAKE_S3__ENDPOINT_URL would break boto3.
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            assert value not in ("", None) and not str(value).endswith(":-}"), f"{name}: {key} may be empty"


def test_workers_share_redis_and_ports_match_settings(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker-gpu", "worker-cpu"):
        env = _env(services[name])
        assert env["FAKESAKE_REDIS__URL"] == "redis://redis:6379/0"
        assert int(env["FAKESAKE_METRICS__PORT"]) == METRICS.port
        assert int(env["FAKESAKE_METRICS__HEALTH_PORT"]) == METRICS.health_port
        assert {str(METRICS.port), str(METRICS.health_port)} <= set(services[name]["expose"])
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert any(v.endswith(":/models:ro") for v in services[name]["volumes"])


def test_gpu_worker_reserves_one_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert _env(services["worker-gpu"])["FAKESAKE_MODEL__DEVICE"] == "cuda"
    assert _env(services["worker-cpu"])["FAKESAKE_MODEL__DEVICE"] == "cpu"
    assert "deploy" not in services["worker-cpu"]


def test_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["producer"]["profiles"] == ["producer"]
    for always in ("redis", "flower", "prometheus"):
        assert "profiles" not in services[always]


def test_redis_persists_with_aof_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_flower_reads_the_same_broker(services: dict[str, dict[str, Any]]) -> None:
    command = services["flower"]["command"]
    assert "flower" in command and "--broker=redis://redis:6379/0" in command


def test_prometheus_scrapes_every_worker_service(services: dict[str, dict[str, Any]]) -> None:
    mounts = services["prometheus"]["volumes"]
    config_mount = next(v for v in mounts if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config_path = COMPOSE.parent / config_mount.split(":")[0]
    assert config_path.exists()
    config = load_yaml(config_path)
    targets = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert {name for sd in targets for name in sd["names"]} == {"worker-gpu", "worker-cpu"}
    assert all(sd["port"] == METRICS.port for sd in targets)


def test_compose_lives_where_the_docs_say() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose -f deploy/compose.yaml" in readme
    assert COMPOSE.relative_to(REPO).as_posix() == "deploy/compose.yaml"
