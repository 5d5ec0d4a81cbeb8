"""Weights resolution and strict loading, for every accepted checkpoint layout and failure."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from producers.errors import ConfigError
from tests.support.checkpoints import (
    LAYOUTS,
    layout_state,
    populate_hf_cache,
    seeded_state,
    small_stand_in,
    write_snapshot,
)
from worker.core import registry
from worker.inference.loader import (
    build_module,
    extract_state_dict,
    load_detector,
    load_into,
    mismatch_report,
    resolve_device,
    save_checkpoint,
)

MJ = registry.get("ffs-mj-5m")
HINT = ("--weights", "FAKESAKE_MODEL__WEIGHTS")


def _same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    loaded = module.state_dict()
    return loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_strictly(tmp_path: Path, layout: str) -> None:
    state = seeded_state(MJ)
    write_snapshot(MJ, tmp_path, state, layout=layout)
    detector = load_detector(MJ, tmp_path, device="cpu")
    assert _same_weights(detector.module, state)
    assert not detector.module.training
    assert detector.device == torch.device("cpu") and detector.spec is MJ


def test_save_checkpoint_writes_the_published_plain_format(tmp_path: Path) -> None:
    module = build_module(MJ)
    path = save_checkpoint(module, tmp_path / "nested" / MJ.weights_file)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, OrderedDict)
    assert {k.split(".")[0] for k in raw} == {"model", "clf"}
    assert {"clf.0.weight", "clf.0.bias", "clf.2.weight", "clf.2.bias"} <= raw.keys()
    assert _same_weights(load_detector(MJ, path, device="cpu").module, dict(raw))


@pytest.mark.parametrize("name", ["ffs-mj-200m", "ffs-sd-200m", "ffs-v2"])
def test_convnext_large_format_on_meta_device(name: str) -> None:
    """The 200M/v2 key layout and shapes, without allocating the ~200M-parameter model."""
    spec = registry.get(name)
    with torch.device("meta"):
        module = build_module(spec)
        features = module.model(torch.empty(1, 3, 64, 64))
    assert features.shape == (1, spec.num_features) == (1, 1536)
    state = module.state_dict()
    assert state["model.head.pre_logits.fc.weight"].shape == (1536, 1536)
    assert state["clf.0.weight"].shape == (128, 1536) and state["clf.2.weight"].shape == (2, 128)
    for layout in LAYOUTS:
        found = extract_state_dict(layout_state(state, layout), state)
        assert mismatch_report(state, found) is None, layout
        load_into(module, layout_state(state, layout), spec)  # strict load_state_dict on meta tensors


@pytest.mark.parametrize("name", ["ffs-mj-200m", "ffs-v2"])
def test_convnext_small_stand_in_loads_real_weights(tmp_path: Path, name: str) -> None:
    spec = small_stand_in(registry.get(name))
    state = seeded_state(spec)
    write_snapshot(spec, tmp_path, state, layout="lightning")
    assert _same_weights(load_detector(spec, tmp_path / spec.weights_file, device="cpu").module, state)


def _mismatch(tmp_path: Path, state: dict[str, torch.Tensor], spec: registry.DetectorSpec = MJ) -> str:
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError) as info:
        load_detector(spec, path, device="cpu")
    assert str(path) in info.value.message and spec.name in info.value.message
    return info.value.message


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = {k: v for k, v in seeded_state(MJ).items() if k != "clf.2.bias"}
    message = _mismatch(tmp_path, state)
    assert "missing keys (1): clf.2.bias" in message and "unexpected" not in message


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = {**seeded_state(MJ), "criterion.pos_weight": torch.ones(1)}
    assert "unexpected keys (1): criterion.pos_weight" in _mismatch(tmp_path, state)


def test_shape_mismatch_names_expected_and_found(tmp_path: Path) -> None:
    state = {**seeded_state(MJ), "clf.0.weight": torch.zeros(64, 1280), "clf.0.bias": torch.zeros(64)}
    message = _mismatch(tmp_path, state)
    assert "shape mismatches (2)" in message and "missing" not in message
    assert "clf.0.weight: expected (128, 1280), found (64, 1280)" in message
    assert "clf.0.bias: expected (128,), found (64,)" in message


def test_wrong_architecture_lists_a_bounded_number_of_keys(tmp_path: Path) -> None:
    state = seeded_state(small_stand_in(registry.get("ffs-v2")))
    message = _mismatch(tmp_path, state)
    assert "missing keys (" in message and "unexpected keys (" in message and "more" in message


def test_backbone_only_file_is_not_mistaken_for_a_wrapper(tmp_path: Path) -> None:
    state = {k: v for k, v in seeded_state(MJ).items() if k.startswith("model.")}
    message = _mismatch(tmp_path, state)
    assert "missing keys (4): clf.0.bias, clf.0.weight, clf.2.bias, clf.2.weight" in message
    assert "unexpected" not in message


def test_pickled_module_is_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(build_module(MJ), path)
    with pytest.raises(ConfigError, match=r"weights-only.*torch\.save\(model\.state_dict\(\), path\)"):
        load_detector(MJ, path, device="cpu")


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / MJ.weights_file
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        load_detector(MJ, path, device="cpu")


def test_missing_local_file_names_path_and_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_detector(MJ, tmp_path / "nope.pt", device="cpu")
    assert str(tmp_path / "nope.pt") in info.value.message
    assert all(h in info.value.message for h in HINT)


def test_snapshot_dir_without_the_weights_file_lists_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "diffusions5M.pt").write_bytes(b"x")
    with pytest.raises(ConfigError) as info:
        load_detector(MJ, tmp_path, device="cpu")
    assert "midjourney5M.pt not found" in info.value.message and "diffusions5M.pt" in info.value.message
    assert all(h in info.value.message for h in HINT)


# --- Hugging Face hub (through a pre-populated cache, offline) -----------------------------------------


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "snap"
    weights = write_snapshot(MJ, snapshot, seeded_state(MJ))
    cache = tmp_path / "hf"
    assert MJ.hub_repo is not None
    commit = populate_hf_cache(cache, MJ.hub_repo, {MJ.weights_file: weights, "config.json": snapshot / "config.json"})
    return cache, commit


def test_hub_default_repo_from_cache_offline(hf_cache: tuple[Path, str]) -> None:
    cache, _ = hf_cache
    detector = load_detector(MJ, None, device="cpu", hf_cache_dir=cache)
    assert _same_weights(detector.module, seeded_state(MJ))


@pytest.mark.parametrize("form", ["uri-pinned", "revision-arg", "uri-main"])
def test_hub_uri_and_pinned_revision(hf_cache: tuple[Path, str], form: str) -> None:
    cache, commit = hf_cache
    weights, revision = {
        "uri-pinned": (f"hf-hub:{MJ.hub_repo}@{commit}", None),
        "revision-arg": (None, commit),
        "uri-main": (f"hf-hub:{MJ.hub_repo}@main", None),
    }[form]
    detector = load_detector(MJ, weights, revision=revision, device="cpu", hf_cache_dir=cache)
    assert _same_weights(detector.module, seeded_state(MJ))


@pytest.mark.parametrize(
    ("weights", "revision"),
    [(None, None), ("hf-hub:Sumsub/elsewhere", None), (None, "0" * 40)],
    ids=["uncached-repo", "other-repo", "unknown-revision"],
)
def test_hub_miss_offline_names_repo_file_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str | None, revision: str | None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        load_detector(MJ, weights, revision=revision, device="cpu", hf_cache_dir=tmp_path)
    message = info.value.message
    repo = weights.removeprefix("hf-hub:") if weights else MJ.hub_repo
    assert f"repo {repo}" in message and MJ.weights_file in message and "HF_HUB_OFFLINE" in message
    assert all(h in message for h in HINT)
    assert "Traceback" not in message


def test_custom_spec_without_repo_needs_weights() -> None:
    spec = registry.custom("resnet18", 512, "mine.pt")
    with pytest.raises(ConfigError, match=r"no hub repo.*--weights"):
        load_detector(spec, None, device="cpu")


def test_unknown_timm_architecture_is_a_config_error(tmp_path: Path) -> None:
    spec = registry.custom("no_such_arch_v9", 512, "mine.pt")
    (tmp_path / "mine.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="no_such_arch_v9"):
        load_detector(spec, tmp_path, device="cpu")


@pytest.mark.parametrize(("asked", "expected"), [("cpu", "cpu"), ("cuda:1", "cuda:1")])
def test_resolve_device(asked: str, expected: str) -> None:
    assert resolve_device(asked) == torch.device(expected)


def test_auto_device_follows_cuda_availability() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad device"):
        resolve_device("tpu-9000")
