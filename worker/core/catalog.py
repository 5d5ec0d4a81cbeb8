"""The detectors a process knows: the built-in registry plus those declared in configuration. Pure.

A detectors file (TOML, or YAML when PyYAML is installed; read by :mod:`worker.service.detectors`) and packages'
``fakesake.detectors`` entry points both come down to the same declaration, validated here::

    [[detectors]]
    name = "kyc-ft"
    base = "ffs-mj-5m"                       # a registry entry: its arch, head and preprocessing ...
    weights = "runs/kyc/model.pt"            # ... with these weights (relative to the file)
    version = "2024-06"
    calibration = "runs/kyc/calibration.json"
    thresholds = { human_max = 0.3, ai_min = 0.7 }

    [[detectors]]
    name = "tiny"
    arch = "resnet18"                        # any timm architecture + the FFS head
    num_features = 512
    weights = "tiny/model.pt"
    preprocessing = { size_px = 224 }        # defaults: bilinear squash, ImageNet mean/std

``fakesake finetune`` writes ``DIR/model.pt`` and ``DIR/calibration.json``: a declaration naming them deploys the
fine-tuned weights with no code change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from producers.errors import ConfigError, ErrorCode
from worker.core import registry
from worker.core.registry import DetectorSpec, Interpolation, Preprocessing, Thresholds

_REMOTE = ("hf-hub:", "s3://")


class _Pre(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size_px: int = Field(default=224, ge=8, le=4096)
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = registry.IMAGENET_MEAN
    std: tuple[float, float, float] = registry.IMAGENET_STD


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    human_max: float = Field(ge=0.0, le=1.0)
    ai_min: float = Field(ge=0.0, le=1.0)


class Declaration(BaseModel):
    """One detector as configuration declares it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: str | None = Field(default=None, description="a registry entry whose arch, head and preprocessing apply")
    arch: str | None = Field(default=None, description="a timm architecture (instead of base)")
    num_features: int | None = Field(default=None, ge=1, description="the backbone's feature width (with arch)")
    hidden: int | None = Field(default=None, ge=1)
    weights: str | None = Field(default=None, description="a .pt file or snapshot dir, hf-hub:REPO[@REV], s3://")
    weights_file: str | None = None
    version: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    calibration: str | None = None
    thresholds: _Limits | None = None
    preprocessing: _Pre | None = None
    description: str = ""

    @model_validator(mode="after")
    def _one_base(self) -> Declaration:
        if (self.base is None) == (self.arch is None):
            raise ValueError("give exactly one of base (a registry entry) or arch (a timm architecture)")
        if self.arch is not None and (self.num_features is None or self.weights is None):
            raise ValueError("arch needs num_features and weights")
        return self


def _path(value: str | None, base_dir: str | None) -> str | None:
    if value is None or base_dir is None or value.startswith(_REMOTE) or PurePath(value).is_absolute():
        return value
    return str(PurePath(base_dir) / value)


def spec_of(decl: Declaration, origin: str, base_dir: str | None = None) -> DetectorSpec:
    """The spec a declaration describes; relative paths are taken from ``base_dir`` (the file's folder)."""
    try:
        thresholds = Thresholds(**decl.thresholds.model_dump()) if decl.thresholds else None
    except ValueError as exc:
        raise ConfigError(f"detector {decl.name} ({origin}): {exc}") from None
    pre = Preprocessing(**decl.preprocessing.model_dump()) if decl.preprocessing else None
    if decl.base is not None:
        parent = registry.get(decl.base)
        changes: dict[str, Any] = {
            "name": decl.name,
            "version": decl.version or parent.version,
            "hub_repo": parent.hub_repo if decl.weights is None else None,
            "description": decl.description or f"{parent.name} with weights from {decl.weights or parent.hub_repo}",
        }
        if decl.arch is None and decl.num_features is not None:
            changes["num_features"] = decl.num_features
        spec = parent.with_overrides(**changes)
    else:
        assert decl.arch is not None and decl.num_features is not None
        spec = registry.custom(decl.arch, decl.num_features, "model.pt", name=decl.name, version=decl.version or "0")
        spec = spec.with_overrides(description=decl.description or f"{decl.arch} + FFS head")
    updates: dict[str, Any] = {
        "weights": _path(decl.weights, base_dir),
        "calibration": _path(decl.calibration, base_dir),
        "origin": origin,
    }
    if thresholds is not None:
        updates["thresholds"] = thresholds
    if pre is not None:
        updates["preprocessing"] = pre
    if decl.hidden is not None:
        updates["hidden"] = decl.hidden
    if decl.weights_file is not None:
        updates["weights_file"] = decl.weights_file
    return spec.with_overrides(**updates)


def declarations(data: Any, origin: str, base_dir: str | None = None) -> list[DetectorSpec]:
    """The specs of a parsed detectors file (``{"detectors": [...]}``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a table with a 'detectors' list, got {type(data).__name__}")
    unknown = set(data) - {"detectors"}
    if unknown:
        raise ConfigError(f"{origin}: unknown keys {sorted(unknown)} (expected a 'detectors' list)")
    items = data.get("detectors") or []
    if not isinstance(items, list):
        raise ConfigError(f"{origin}: 'detectors' must be a list of tables")
    specs = []
    for n, item in enumerate(items):
        try:
            decl = Declaration.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise ConfigError(f"{origin}: detector #{n + 1}: {problems}") from None
        specs.append(spec_of(decl, origin, base_dir))
    return specs


class Catalog:
    """Built-in and configured detectors by name; :meth:`get` fails listing the known names."""

    def __init__(self, configured: Iterable[DetectorSpec] = ()) -> None:
        self._specs = {name: registry.get(name) for name in registry.names()}
        for spec in configured:
            if spec.name in self._specs:
                first = self._specs[spec.name].origin
                raise ConfigError(f"detector {spec.name!r} of {spec.origin} is already declared ({first})")
            self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[DetectorSpec]:
        return [self._specs[n] for n in self.names()]

    def get(self, name: str) -> DetectorSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown model {name!r}; known models: {', '.join(self.names())}", ErrorCode.UNKNOWN_MODEL
            ) from None
