"""worker.inference.export_child: the ONNX export runs in a child process; its graph and its errors come back."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from producers.errors import ConfigError, ErrorCode
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from worker.core import registry
from worker.inference.export_child import export_in_child
from worker.inference.loader import load_detector, weights_sha256
from worker.inference.onnx_classifier import OnnxClassifier, export_graph
from worker.inference.onnx_start import load_onnx
from worker.inference.pixels import to_pixels

SPEC = registry.get("ffs-mj-5m")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snapshot(SPEC, tmp_path_factory.mktemp("w"), seeded_state(SPEC, 3))


def test_the_child_exports_the_graph_this_process_would(weights: Path) -> None:
    load = partial(load_detector, SPEC, weights, device="cpu")
    from_child = OnnxClassifier(threads=1, graph=export_in_child(load, SPEC.ref), spec=SPEC)
    here = OnnxClassifier(threads=1, graph=export_graph(load()), spec=SPEC)
    inputs = [to_pixels(photo(320 + 32 * i, 240, i), SPEC.preprocessing) for i in range(3)]
    np.testing.assert_array_equal(from_child.predict(inputs), here.predict(inputs))


def test_a_cold_start_leaves_torch_out_of_the_process(weights: Path, tmp_path: Path) -> None:
    probe = (
        "import sys; from functools import partial; from pathlib import Path\n"
        "from worker.core import registry\n"
        "from worker.inference.onnx_start import load_onnx\n"
        "spec = registry.get('ffs-mj-5m'); w = Path(sys.argv[1])\n"
        "from worker.inference.loader import load_detector\n"  # the loader module imports torch lazily
        "c = load_onnx(spec, w, sys.argv[2], threads=1, cache_dir=Path(sys.argv[3]),\n"
        "              load=partial(load_detector, spec, w, device='cpu'))\n"
        "print(c.detector is None, 'torch' in sys.modules, 'timm' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [str(weights), weights_sha256(weights), str(tmp_path / "graphs")]
    done = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]  # exported (by a child), yet no torch, no timm
    assert list((tmp_path / "graphs").glob("*.onnx"))


def test_the_childs_config_error_comes_back_with_its_code_and_message(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    with pytest.raises(ConfigError) as here:
        load_detector(SPEC, missing, device="cpu")
    with pytest.raises(ConfigError) as child:
        export_in_child(partial(load_detector, SPEC, missing, device="cpu"), SPEC.ref)
    assert child.value.code == here.value.code == ErrorCode.CONFIG
    assert child.value.message == here.value.message


def test_any_other_failure_in_the_child_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        export_in_child(partial(int, "not a number"), SPEC.ref)  # load() raises ValueError
    assert "cannot export to ONNX: ValueError: invalid literal" in caught.value.message


def test_a_child_that_dies_without_a_report_names_its_exit_status() -> None:
    with pytest.raises(ConfigError) as caught:
        export_in_child(partial(os._exit, 9), SPEC.ref)
    assert f"exporting {SPEC.ref} to ONNX failed: its child process ended with status 9" in caught.value.message


def test_a_wedged_child_is_stopped() -> None:
    import time

    with pytest.raises(ConfigError, match="took over 2 s; the child was stopped"):
        export_in_child(partial(time.sleep, 60), SPEC.ref, timeout_s=2)


def test_load_onnx_without_a_cache_exports_in_a_child(weights: Path) -> None:
    calls: list[str] = []

    def export(load: object, ref: str) -> bytes:
        calls.append(ref)
        return export_in_child(load, ref)  # type: ignore[arg-type]

    load = partial(load_detector, SPEC, weights, device="cpu")
    classifier = load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=None, load=load, export=export)
    assert calls == [SPEC.ref] and classifier.detector is None


def test_the_child_imports_what_this_process_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module reachable only through a path this process added at run time (not PYTHONPATH, not the cwd).
    (tmp_path / "export_child_helper.py").write_text("def load():\n    raise ValueError('raised by the helper')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    import export_child_helper  # type: ignore[import-not-found]

    with pytest.raises(ConfigError, match="ValueError: raised by the helper"):
        export_in_child(export_child_helper.load, SPEC.ref)
