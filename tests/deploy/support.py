"""What the deploy tests check deploy files against: the real CLI parser, Celery's worker options, the
settings classes' variable names, the project version, and a small Dockerfile reader."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from worker.service.settings import MetricsSettings
from worker.service.settings_doc import env_var_names
from worker.service.supervisor import take_processes

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
METRICS = MetricsSettings()
_VAR = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def unknown_settings(names: Iterable[str]) -> list[str]:
    """``FAKESAKE_*`` names no settings class reads (other variables, e.g. HF_HUB_OFFLINE, are not ours)."""
    valid = env_var_names()
    return sorted(n for n in names if n.startswith("FAKESAKE_") and n not in valid)


@cache
def _parser() -> argparse.ArgumentParser:
    from worker.service.cli import build_parser

    return build_parser()


def subcommands() -> set[str]:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


@cache
def celery_worker_options() -> frozenset[str]:
    from celery.bin.worker import worker

    return frozenset(opt for p in worker.params for opt in (*p.opts, *p.secondary_opts))


def check_fakesake_argv(argv: list[str]) -> argparse.Namespace | None:
    """Fail unless ``fakesake <argv>`` parses with the real CLI; ``worker`` options must be Celery's."""
    if argv == ["--help"]:
        return None
    assert argv and argv[0] in subcommands(), f"`fakesake {' '.join(argv)}`: no sub-command {argv[:1]}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = _parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`fakesake {' '.join(argv)}` does not parse: {err.getvalue().strip()}") from exc
    if argv[0] == "worker":
        extra = list(args.celery_args)
        extra = extra[1:] if extra[:1] == ["--"] else extra
        _, extra = take_processes(extra)  # fakesake's own worker option; the rest go to `celery worker`
        for token in extra:
            if token.startswith("-"):
                option = token.split("=", 1)[0]
                assert option in celery_worker_options(), f"`celery worker` has no option {option}"
    return args


# ---------------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def get(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]


@cache
def dockerfile_args() -> dict[str, str]:
    """Global ``ARG`` defaults (declared before the first ``FROM``)."""
    args: dict[str, str] = {}
    for name, value in _instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            break
        if name == "ARG":
            key, _, default = value.partition("=")
            args[key] = default.strip('"')
    return args


def _instructions(text: str) -> list[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out.append((name.upper(), value.strip()))
    return out


def expand(value: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


@cache
def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for name, value in _instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            parts = value.split()
            base = expand(parts[0], dockerfile_args())
            stage_name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[stage_name] = Stage(stage_name, base)
        elif current is not None:
            current.instructions.append((name, value))
    return stages


def stage_chain(target: str) -> list[Stage]:
    """``target`` and the stages it is built ``FROM``, nearest first."""
    stages = dockerfile_stages()
    chain = [stages[target]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(target: str, instruction: str) -> str | None:
    """The value of ``USER``/``ENTRYPOINT``/``CMD``/``HEALTHCHECK`` a target ends up with (inherited)."""
    for stage in stage_chain(target):
        values = stage.get(instruction)
        if values:
            return values[-1]
    return None


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), f"not exec form: {value}"
    return parsed


def healthcheck_command(value: str) -> list[str]:
    """``--interval=30s ... CMD ["a", "b"]`` -> ``["a", "b"]``."""
    _, sep, cmd = value.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {value}"
    return exec_form(cmd.strip())


def image_entrypoint(target: str) -> list[str]:
    value = effective(target, "ENTRYPOINT")
    assert value is not None, f"{target} has no ENTRYPOINT"
    return exec_form(value)
