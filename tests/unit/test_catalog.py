"""Detectors from configuration: the declaration format (TOML and YAML), entry points, and `fakesake models`."""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from producers.errors import ConfigError, ErrorCode
from worker.core import registry
from worker.core.catalog import Catalog, declarations
from worker.core.registry import Preprocessing, Thresholds
from worker.service.detectors import from_entry_points, load_catalog, read_file

TOML = """
[[detectors]]
name = "kyc-ft"
base = "ffs-mj-5m"
weights = "ft/model.pt"
version = "2024-06"
calibration = "ft/calibration.json"
thresholds = { human_max = 0.3, ai_min = 0.7 }

[[detectors]]
name = "tiny"
arch = "resnet18"
num_features = 512
weights = "/abs/tiny.pt"
preprocessing = { size_px = 256, interpolation = "bicubic" }
"""

YAML = """
detectors:
  - name: kyc-ft
    base: ffs-mj-5m
    weights: ft/model.pt
    version: "2024-06"
    calibration: ft/calibration.json
    thresholds: {human_max: 0.3, ai_min: 0.7}
  - name: tiny
    arch: resnet18
    num_features: 512
    weights: /abs/tiny.pt
    preprocessing: {size_px: 256, interpolation: bicubic}
"""


@pytest.mark.parametrize(("suffix", "text"), [(".toml", TOML), (".yaml", YAML)])
def test_a_detectors_file_declares_finetuned_and_custom_detectors(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"detectors{suffix}"
    path.write_text(text)
    cat = load_catalog(str(path), points=[])
    ft, tiny = cat.get("kyc-ft"), cat.get("tiny")
    base = registry.get("ffs-mj-5m")
    assert (ft.arch, ft.num_features, ft.preprocessing, ft.version) == (base.arch, 1280, base.preprocessing, "2024-06")
    assert ft.weights == str(tmp_path / "ft/model.pt") and ft.calibration == str(tmp_path / "ft/calibration.json")
    assert ft.thresholds == Thresholds(0.3, 0.7) and ft.hub_repo is None and ft.origin == str(path)
    assert (tiny.arch, tiny.num_features, tiny.weights, tiny.version) == ("resnet18", 512, "/abs/tiny.pt", "0")
    assert tiny.preprocessing == Preprocessing(size_px=256, interpolation="bicubic")
    assert set(registry.names()) < set(cat.names()) and cat.get("ffs-sd-5m") == registry.get("ffs-sd-5m")


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"name": "x"}, "exactly one of base"),
        ({"name": "x", "base": "ffs-mj-5m", "arch": "resnet18"}, "exactly one of base"),
        ({"name": "x", "arch": "resnet18", "weights": "w.pt"}, "num_features"),
        ({"name": "x", "base": "ffs-mj-5m", "colour": "red"}, "colour"),
        ({"name": "x", "base": "ffs-mj-5m", "thresholds": {"human_max": 0.8, "ai_min": 0.2}}, "human_max"),
        ({"name": "bad name", "base": "ffs-mj-5m"}, "name"),
    ],
)
def test_bad_declarations_say_what_is_wrong(item: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        declarations({"detectors": [item]}, "test")


def test_unknown_base_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        declarations({"detectors": [{"name": "x", "base": "ffs-nope"}]}, "test")
    assert info.value.code is ErrorCode.UNKNOWN_MODEL
    with pytest.raises(ConfigError, match="already declared"):
        Catalog(declarations({"detectors": [{"name": "ffs-mj-5m", "base": "ffs-sd-5m"}]}, "test"))
    with pytest.raises(ConfigError, match="unknown keys"):
        declarations({"detector": []}, "test")


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        read_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[detectors]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        read_file(tmp_path / "bad.toml")


def shipped() -> list[dict[str, object]]:
    """An entry point's object: what a package that ships detectors exposes."""
    return [{"name": "pkg-det", "base": "ffs-sd-5m", "weights": "/opt/pkg/model.pt", "version": "3"}]


def test_entry_points_add_detectors() -> None:
    point = EntryPoint("pkg", f"{__name__}:shipped", "fakesake.detectors")
    cat = Catalog(from_entry_points([point]))
    spec = cat.get("pkg-det")
    assert (spec.version, spec.weights, spec.arch) == ("3", "/opt/pkg/model.pt", registry.get("ffs-sd-5m").arch)
    assert spec.origin.startswith("entry point pkg")
    broken = EntryPoint("broken", "no_such_module_xyz:thing", "fakesake.detectors")
    with pytest.raises(ConfigError, match="entry point broken"):
        from_entry_points([broken])


def test_models_lists_configured_detectors_with_the_hash_of_local_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.service.cli import main

    for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:
        monkeypatch.delenv(key)
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "model.pt").write_bytes(b"weights")
    (tmp_path / "d.toml").write_text('[[detectors]]\nname = "kyc-ft"\nbase = "ffs-mj-5m"\nweights = "ft/model.pt"\n')
    monkeypatch.setenv("FAKESAKE_MODEL__NAMES", "ffs-mj-5m,kyc-ft")
    assert main(["models", "--detectors", str(tmp_path / "d.toml"), "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    sha = hashlib.sha256(b"weights").hexdigest()
    assert rows["kyc-ft"]["weights_sha256"] == sha and rows["kyc-ft"]["identity"] == f"kyc-ft@1.0+{sha[:12]}"
    assert rows["kyc-ft"]["default"] and rows["ffs-mj-5m"]["default"] and not rows["ffs-sd-5m"]["default"]
    assert rows["ffs-sd-5m"]["weights"].startswith("hf-hub:Sumsub/") and rows["ffs-sd-5m"]["weights_sha256"] is None


def test_loaded_weights_stamp_their_sha256_and_hub_commit_on_the_identity(tmp_path: Path) -> None:
    from worker.service.loading import LoadedModel

    spec = registry.get("ffs-mj-5m")
    snapshot = tmp_path / "models--Sumsub--x" / "snapshots" / ("c0ffee" * 7)[:40]
    snapshot.mkdir(parents=True)
    hub_file, local_file = snapshot / spec.weights_file, tmp_path / "model.pt"
    for path, body in ((hub_file, b"one"), (local_file, b"two")):
        path.write_bytes(body)

    def loaded(path: Path) -> LoadedModel:
        return LoadedModel(spec, spec.thresholds, classifier=None, decode=bytes, device="cpu", weights_path=str(path))  # type: ignore[arg-type]

    local, hub = loaded(local_file).spec, loaded(hub_file).spec
    assert local.identity == f"ffs-mj-5m@1.0+{hashlib.sha256(b'two').hexdigest()[:12]}" and local.revision is None
    assert hub.identity == f"ffs-mj-5m@1.0+{hashlib.sha256(b'one').hexdigest()[:12]}.hf.{snapshot.name[:12]}"
    assert spec.identity == "ffs-mj-5m@1.0"  # the registry's spec is untouched
