"""Rules of the source tree that no other test would notice breaking."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _tracked_python() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line]


def test_code_points_at_nothing_outside_the_repository() -> None:
    """Comments and docstrings must make sense to a reader of this repository alone: no notes kept elsewhere,
    no tracker numbers that mean nothing without the tracker."""
    outside = re.compile(r"REFERENCE\.md|\bissues? #?\d+\b", re.IGNORECASE)
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _tracked_python()
        if path.name != Path(__file__).name
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("package", ["celery", "kombu"])
def test_libraries_whose_internals_we_use_are_pinned_to_tested_versions(package: str) -> None:
    """producers/wire.py writes Celery's message format by hand and worker/stores/broker.py subclasses kombu's Redis
    transport: a new minor release must be tested before it is allowed, so both carry an upper bound that the
    installed (tested) version satisfies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [requirement] = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == package]
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), requirement
    assert requirement.specifier.contains(version(package)), (requirement, version(package))
