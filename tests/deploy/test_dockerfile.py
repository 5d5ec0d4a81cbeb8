"""deploy/Dockerfile against the code: targets, pinned bases, non-root users, commands the CLI knows.

Docker cannot run here; these checks read the file (see deploy/README.md for what was not verified).
"""

from __future__ import annotations

import fnmatch

import pytest

from tests.deploy.support import (
    METRICS,
    REPO,
    check_fakesake_argv,
    dockerfile_args,
    dockerfile_stages,
    effective,
    exec_form,
    expand,
    healthcheck_command,
    image_entrypoint,
    stage_chain,
)

TARGETS = ("worker-cuda", "worker-cpu", "producer", "api")
WORKERS = ("worker-cuda", "worker-cpu")


def test_targets_exist() -> None:
    assert set(TARGETS) <= set(dockerfile_stages())


def test_external_bases_are_pinned_by_tag() -> None:
    for stage in dockerfile_stages().values():
        if stage.base in dockerfile_stages() or stage.base == "scratch":
            continue
        assert "$" not in stage.base, f"{stage.name}: unresolved base {stage.base}"
        name, _, tag = stage.base.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{stage.name}: base {stage.base} not pinned"


@pytest.mark.parametrize("target", TARGETS)
def test_targets_run_as_a_non_root_user(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None, f"{target} runs as root (no USER)"
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and (not uid.isdigit() or int(uid) > 0), f"{target}: USER {user}"
    assert uid.isdigit(), "numeric UID so Kubernetes runAsNonRoot can verify it"


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_and_cmd_are_real_fakesake_commands(target: str) -> None:
    assert image_entrypoint(target) == ["fakesake"]
    cmd = effective(target, "CMD")
    assert cmd is not None
    check_fakesake_argv(exec_form(cmd))


@pytest.mark.parametrize("target", WORKERS)
def test_worker_healthcheck_is_fakesake_health_live(target: str) -> None:
    value = effective(target, "HEALTHCHECK")
    assert value is not None, f"{target} has no HEALTHCHECK"
    command = healthcheck_command(value)
    assert command[:2] == ["fakesake", "health"] and "--live" in command
    args = check_fakesake_argv(command[1:])
    assert args is not None and args.kind == "live"


@pytest.mark.parametrize("target", WORKERS)
def test_worker_images_expose_the_default_ports(target: str) -> None:
    exposed = {p for stage in stage_chain(target) for line in stage.get("EXPOSE") for p in line.split()}
    assert {str(METRICS.port), str(METRICS.health_port)} <= exposed


def _pip_installs(stage_name: str) -> list[str]:
    return [run for run in dockerfile_stages()[stage_name].get("RUN") if "pip install" in run]


def _venv_stage(target: str) -> str:
    copies = [c for c in dockerfile_stages()[target].get("COPY") if "/opt/venv" in c]
    assert len(copies) == 1, f"{target} should copy exactly one venv"
    return copies[0].split("--from=")[1].split()[0]


def test_producer_image_has_no_torch() -> None:
    build = _venv_stage("producer")
    installs = _pip_installs(build)
    assert installs and all("torch" not in run.split("!")[0] and "[" not in run for run in installs)
    assert any('import torch"' in run for run in installs), "the build asserts torch is absent"


@pytest.mark.parametrize(
    ("target", "index_arg"), [("worker-cpu", "TORCH_CPU_INDEX"), ("worker-cuda", "TORCH_CUDA_INDEX")]
)
def test_worker_torch_comes_from_the_matching_index(target: str, index_arg: str) -> None:
    installs = _pip_installs(_venv_stage(target))
    assert any(f'--index-url "${index_arg}"' in run and "torch==" in run for run in installs)
    assert any("/src[${WORKER_EXTRAS}]" in run for run in installs)
    assert "worker" in dockerfile_args()["WORKER_EXTRAS"].split(",")


def test_cuda_target_runs_on_a_cuda_base_with_a_matching_torch_index() -> None:
    base = dockerfile_stages()["worker-cuda"].base
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    cuda = base.split(":")[1].split("-")[0]  # 12.8.1
    major, minor = cuda.split(".")[:2]
    assert dockerfile_args()["TORCH_CUDA_INDEX"].endswith(f"/cu{major}{minor}")
    assert dockerfile_stages()["cuda-build"].base == base, "venv built against the runtime's Python"


def test_weights_can_be_baked_with_a_build_arg() -> None:
    weights = dockerfile_stages()["weights"]
    assert any("WEIGHTS_URL" in a for a in weights.get("ARG"))
    for target in WORKERS:
        assert any("--from=weights" in c and "/models" in c for c in dockerfile_stages()[target].get("COPY"))


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for copy in dockerfile_stages()["src"].get("COPY"):
        sources += [s for s in copy.split()[:-1] if not s.startswith("--")]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: missing from the repository"
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"


def test_expand_resolves_global_args() -> None:
    assert expand("${CUDA_IMAGE}", dockerfile_args()).startswith("nvidia/cuda:")
